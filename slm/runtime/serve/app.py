"""The HTTP API: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health.

    POST body ─► read_json (size, UTF-8, JSON) ─► pydantic request ─► checks (model, max_tokens, ...)
      ─► tools / response_format as a grammar (tools.py; a bad schema is a 400 here) ─► GenerationJob ─► SlotPool.acquire (429 when the line is full) ─► Generation on a worker
      ─► first events (a bad prompt is a 400 here, before any byte is sent) ─► JSON or SSE stream

Every error is OpenAI's JSON error shape (errors.py). GET /metrics is Prometheus' text format
(metrics.py). Running the app is server.py's job.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from slm.runtime.constraint import Constraint, ConstraintError
from slm.runtime.engine import Engine
from slm.runtime.events import GenerationEvent
from slm.runtime.sampling import SamplingParams
from slm.runtime.serve.errors import ApiError, error_body, install_handlers, validation_error
from slm.runtime.serve.formats import ChatFormat, CompletionFormat, sse
from slm.runtime.serve.metrics import CONTENT_TYPE, Metrics
from slm.runtime.serve.schemas import ChatCompletionRequest, CompletionRequest, ResponseFormat, Tool
from slm.runtime.serve.slots import QueueFullError, SlotPool
from slm.runtime.serve.tools import ReplyReader, ToolPlan, reply_schema, tag_grammar
from slm.runtime.serve.worker import Generation, GenerationJob
from slm.core.errors import PromptTooLongError, SlmError

log = logging.getLogger("slm.serve")

MAX_BODY_BYTES = 4 * 1024 * 1024    # a prompt must fit the context anyway: this is 1000s of tokens over
RETRY_AFTER_S = 1


@dataclass
class ServeState:
    engine: Engine
    model_id: str
    api_key: str | None
    pool: SlotPool
    max_concurrent: int
    context_tokens: int             # prompt + completion tokens one request may use
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: Metrics | None = None
    executor: ThreadPoolExecutor | None = None
    active: set[threading.Event] = field(default_factory=set)   # cancel events of running requests

    def start_executor(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=self.max_concurrent, thread_name_prefix="slm-generate")
        return self.executor

    def stop(self) -> None:
        """Stop every generation at its next token and wait for the workers."""
        for cancel in list(self.active):
            cancel.set()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


def create_app(engine: Engine, *, model_id: str, api_key: str | None = None, max_queue: int = 16,
               max_concurrent: int = 2) -> FastAPI:
    """The FastAPI app serving `engine` as the one model `model_id`. Allocates max_concurrent KV caches."""
    if not isinstance(max_concurrent, int) or max_concurrent < 1:
        raise SlmError(f"max_concurrent={max_concurrent!r} (--max-concurrent) must be an integer >= 1")
    if not isinstance(max_queue, int) or max_queue < 0:
        raise SlmError(f"max_queue={max_queue!r} (--max-queue) must be an integer >= 0 "
                       "(0: no waiting, 429 when all slots are busy)")
    if api_key is not None and not api_key:
        raise SlmError("api_key='' is empty; give a non-empty key, or None for no authentication")
    state = ServeState(engine=engine, model_id=model_id, api_key=api_key, max_concurrent=max_concurrent,
                       pool=SlotPool([engine.new_cache() for _ in range(max_concurrent)], max_queue=max_queue),
                       context_tokens=min(engine.capacity, engine.manifest.dims.max_positions
                                                  * getattr(engine, "patch_size", 1)))   # a byte engine's table counts patches
    state.metrics = Metrics(queue_depth=lambda: state.pool.waiting,
                            slots_busy=lambda: state.pool.total - state.pool.idle)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_executor()
        yield
        await asyncio.to_thread(state.stop)

    app = FastAPI(title="slm", summary="OpenAI-compatible local server for an slm package", version="1",
                  lifespan=lifespan)
    app.state.slm = state
    install_handlers(app)

    app.add_middleware(_CountRequests, metrics=state.metrics)
    app.include_router(router)
    app.openapi = lambda: _openapi(app)
    return app


def _state(request: Request) -> ServeState:
    return request.app.state.slm


async def require_api_key(request: Request) -> None:
    key = _state(request).api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # header values arrive latin-1 decoded: compare the raw bytes, in constant time
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("latin-1"), key.encode("utf-8")):
        raise ApiError(status=401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
                       message="missing or incorrect API key; send 'Authorization: Bearer KEY' with the key "
                               "the server was started with (slm serve --api-key KEY)")


router = APIRouter()
_auth = [Depends(require_api_key)]


def _body_doc(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


@router.get("/health")
async def health(request: Request) -> dict:
    state = _state(request)
    return {"status": "ok", "model": state.model_id,
            "slots": {"total": state.pool.total, "idle": state.pool.idle}, "waiting": state.pool.waiting}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models", dependencies=_auth)
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(_state(request))]}


@router.get("/v1/models/{model_id:path}", dependencies=_auth)
async def get_model(request: Request, model_id: str) -> dict:
    state = _state(request)
    _check_model(state, model_id)
    return _model_card(state)


@router.post("/v1/chat/completions", dependencies=_auth, openapi_extra=_body_doc(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    state = _state(request)
    body = _parse(ChatCompletionRequest, await read_json(request))
    _check_request(state, body)
    plan = ToolPlan.of(body, state.engine.manifest.chat_template, tag_grammar(state.engine.tokenizer))
    if plan.constraint is not None or body.tools:
        await _check_constraint(state, plan.constraint, tools=body.tools, response_format=body.response_format)
    job = GenerationJob(prompt=plan.messages, raw=False, params=_sampling(body), stop=body.stops(),
                        max_tokens=_max_tokens(state, body.token_limit(), default=state.context_tokens),
                        constraint=plan.constraint, tools=plan.template_tools)
    return await _respond(request, state, job=job, fmt=ChatFormat(model=state.model_id), stream=body.stream,
                          include_usage=body.include_usage(), prompt_param="messages",
                          constraint_param=_constraint_param(body.response_format),
                          reader=ReplyReader(calls=plan.calls))


@router.post("/v1/completions", dependencies=_auth, openapi_extra=_body_doc(CompletionRequest))
async def completions(request: Request) -> Response:
    state = _state(request)
    body = _parse(CompletionRequest, await read_json(request))
    _check_request(state, body)
    schema = reply_schema(body.response_format)
    constraint = Constraint.json_schema(schema) if schema is not None else None
    if constraint is not None:
        await _check_constraint(state, None, tools=None, response_format=body.response_format)
    job = GenerationJob(prompt=body.text(), raw=True, params=_sampling(body), stop=body.stops(),
                        max_tokens=_max_tokens(state, body.token_limit(), default=16), constraint=constraint)
    return await _respond(request, state, job=job, fmt=CompletionFormat(model=state.model_id), stream=body.stream,
                          include_usage=body.include_usage(), prompt_param="prompt", reader=ReplyReader(calls=False),
                          constraint_param=_constraint_param(body.response_format))


# --- reading and checking a request ------------------------------------------------------------------
async def read_json(request: Request) -> object:
    """The body as JSON, refusing (400/413) what is too big, not UTF-8, not JSON, or not valid Unicode."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(status=413,
                       message=f"the request body has {declared} bytes; at most {MAX_BODY_BYTES} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(status=413, message=f"the request body exceeds {MAX_BODY_BYTES} bytes, the most accepted")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(status=400, message=f"the request body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                                           f"offset {e.start}); send JSON encoded as UTF-8") from None
    if not text.strip():
        raise ApiError(status=400, message="the request body is empty; send a JSON object")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ApiError(status=400, message=f"the request body is not valid JSON: {e.msg} (line {e.lineno}, "
                                           f"column {e.colno})") from None
    except RecursionError:
        raise ApiError(status=400, message="the request body nests JSON too deeply") from None
    _reject_surrogates(value)
    return value


def _reject_constant(name: str) -> None:
    raise ApiError(status=400, message=f"the request body is not valid JSON: {name} is not a JSON number")


def _reject_surrogates(value: object) -> None:
    """JSON may spell lone UTF-16 surrogates ("\\ud800"), which are not text and break the tokenizer."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ApiError(status=400, message=f"a string in the request holds a lone UTF-16 surrogate "
                                                   f"({item[e.start]!r}); send valid Unicode text") from None
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def _parse(model: type[BaseModel], value: object):
    if not isinstance(value, dict):
        raise ApiError(status=400, message=f"the request body is a JSON {type(value).__name__}; send a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def _check_model(state: ServeState, model: str | None) -> None:
    if model is not None and model != state.model_id:
        raise ApiError(status=404, param="model", code="model_not_found",
                       message=f"the model {model!r} does not exist; this server serves {state.model_id!r} "
                               f"(see GET /v1/models)")


def _check_request(state: ServeState, body: ChatCompletionRequest | CompletionRequest) -> None:
    _check_model(state, body.model)
    bad = body.unsupported()
    if bad:
        raise ApiError(status=400, param=bad[0], message=bad[1])


async def _check_constraint(state: ServeState, constraint: Constraint | None, *, tools: list[Tool] | None,
                            response_format: ResponseFormat | None) -> None:
    """Compile each tool's parameters, the response_format's schema and the request's whole grammar
    off the event loop; a 400 names the field and where in it what is wrong (every tool is checked,
    whatever tool_choice says)."""
    grammars = await asyncio.to_thread(state.engine.grammars)
    reply = reply_schema(response_format)
    parts = [(f"tools.{i}.function.parameters", Constraint.json_schema(t.function.parameters or {"type": "object"}))
             for i, t in enumerate(tools or ())]
    if reply is not None:
        parts.append(("response_format.json_schema.schema" if response_format.type == "json_schema"
                      else "response_format", Constraint.json_schema(reply)))
    if constraint is not None and constraint not in [c for _, c in parts]:     # the tool grammar around them
        parts.append(("tools" if reply is None else parts[-1][0], constraint))

    def check() -> None:
        for param, part in parts:
            try:
                grammars.check(part)
            except ConstraintError as e:
                raise ApiError(status=400, param=param, message=str(e)) from None
    await asyncio.to_thread(check)


def _max_tokens(state: ServeState, requested: int | None, *, default: int) -> int:
    limit = state.context_tokens
    if requested is None:
        return min(default, limit)
    if requested > limit:
        raise ApiError(status=400, param="max_tokens",
                       message=f"max_tokens={requested} is out of range; this server's context holds {limit} "
                               f"tokens, prompt included: use 1 <= max_tokens <= {limit}")
    return requested


def _sampling(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    try:
        return SamplingParams.of(body)
    except ValueError as e:
        param = str(e).split("=", 1)[0] if "=" in str(e) else None
        raise ApiError(status=400, param=param, message=str(e)) from None


def _model_card(state: ServeState) -> dict:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "slm"}


# --- generating --------------------------------------------------------------------------------------
async def _respond(request: Request, state: ServeState, *, job: GenerationJob, fmt: ChatFormat | CompletionFormat,
                   stream: bool, include_usage: bool, prompt_param: str, reader: ReplyReader,
                   constraint_param: str = "tools") -> Response:
    cancel = threading.Event()
    streaming = False       # once the event stream is returned, it owns `cancel` and calls _finish
    watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
    state.active.add(cancel)
    try:
        try:
            cache = await state.pool.acquire()
        except QueueFullError as e:
            raise ApiError(status=429, message=str(e), code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        generation = Generation.start(engine=state.engine, job=job, cache=cache, cancel=cancel,
                                      executor=state.start_executor(), on_done=state.pool.release,
                                      metrics=state.metrics)
        batches = generation.batches()
        try:
            first = await anext(batches, None)      # a bad prompt raises here, before any byte is sent
        except (SlmError, ValueError) as e:
            raise _engine_error(e, prompt_param, constraint_param) from None
        if first is None:                           # the client left while waiting in line
            return Response(status_code=499)
        if stream:
            watcher.cancel()        # the streaming response watches for the disconnect itself
            streaming = True
            return _EventStream(_stream(generation, batches, first, fmt=fmt, include_usage=include_usage,
                                        reader=reader, constraint_param=constraint_param), on_close=lambda: _finish(state, cancel))
        texts = ["".join(e.text for e in first)]
        try:
            async for batch in batches:
                texts.append("".join(e.text for e in batch))
        except ConstraintError as e:        # nothing is sent yet: still a 400, not a 500
            raise _engine_error(e, prompt_param, constraint_param) from None
        last = generation.last
        shown = reader.feed("".join(texts))
        rest, calls, finish = reader.finish(last.finish_reason)
        return JSONResponse(fmt.whole(text=shown + rest, finish_reason=finish, last=last, tool_calls=calls))
    finally:
        watcher.cancel()
        if not streaming:
            _finish(state, cancel)


def _finish(state: ServeState, cancel: threading.Event) -> None:
    """The response is over: stop its worker if it still runs (no-op when done)."""
    cancel.set()
    state.active.discard(cancel)


class _EventStream(StreamingResponse):
    """A server-sent-event response that calls `on_close` however it ends: sent, failed, or client gone
    (even when the client leaves before the first chunk, so the generator never started)."""

    def __init__(self, content: AsyncIterator[str], *, on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def _stream(generation: Generation, batches: AsyncIterator[list[GenerationEvent]], first: list[GenerationEvent],
                  *, fmt: ChatFormat | CompletionFormat, include_usage: bool, reader: ReplyReader,
                  constraint_param: str = "tools") -> AsyncIterator[str]:
    """Server-sent events, one chunk per batch of events that arrived together; a tool call goes
    out once whole, as OpenAI's two deltas (id and name, then the arguments)."""
    try:
        opening = fmt.chunk(text=None, finish_reason=None, with_usage=include_usage)
        if opening:
            yield sse(opening)
        batch = first
        while batch is not None:
            text = reader.feed("".join(e.text for e in batch))
            finish = batch[-1].finish_reason
            if finish:
                rest, calls, finish = reader.finish(finish)
                text += rest
            if text:
                yield sse(fmt.chunk(text=text, finish_reason=None, with_usage=include_usage))
            if finish:
                for i, call in enumerate(calls):
                    head = {"id": call["id"], "type": "function", "function": {"name": call["function"]["name"],
                                                                                "arguments": ""}}
                    for part in (head, {"function": {"arguments": call["function"]["arguments"]}}):
                        yield sse(fmt.chunk(text="", finish_reason=None, with_usage=include_usage,
                                            tool_call=(i, part)))
                yield sse(fmt.chunk(text="", finish_reason=finish, with_usage=include_usage))
            batch = await anext(batches, None)
        if include_usage and generation.last is not None:
            yield sse(fmt.usage_chunk(generation.last))
        yield sse("[DONE]")
    except ConstraintError as e:   # the grammar cannot go on: the error the same request gets unstreamed (a 400)
        yield sse(error_body(status=400, message=str(e), param=constraint_param))
    except Exception as e:  # noqa: BLE001 - the status line is sent; the error goes in the stream
        log.exception("generation failed mid-stream")
        yield sse(error_body(status=500, message=f"generation failed: {type(e).__name__}: {e}"))


async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client hangs up (the body is read by now, so only disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


def _constraint_param(rf: ResponseFormat | None) -> str:
    """The field a grammar that fails while decoding came from."""
    return "tools" if rf is None or rf.type == "text" else \
        "response_format.json_schema.schema" if rf.type == "json_schema" else "response_format"


def _engine_error(e: Exception, prompt_param: str, constraint_param: str = "tools") -> ApiError:
    if isinstance(e, ConstraintError):      # the grammar, not the prompt (slm.runtime.constraint.Guide.refused)
        return ApiError(status=400, param=constraint_param, message=str(e))
    if isinstance(e, PromptTooLongError):
        return ApiError(status=400, param=prompt_param, code="context_length_exceeded", message=str(e))
    return ApiError(status=400, param=prompt_param, message=str(e))


_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health")


class _CountRequests:
    """ASGI middleware: count each answered request by endpoint and the status it was sent (a plain
    wrapper of `send`, so streaming and disconnect handling are untouched)."""

    def __init__(self, app, *, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint=endpoint, status=str(message["status"])).inc()
            await send(message)
        await self.app(scope, receive, counting_send)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, plus the request bodies that the handlers parse themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in (ChatCompletionRequest, CompletionRequest)],
                                     ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        app.openapi_schema = schema
    return app.openapi_schema
