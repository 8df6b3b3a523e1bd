"""Use an slm model from your own Python program: `python examples/embed.py PATH/TO/PACKAGE`.

Needs only the runtime: `pip install 'slm[cpu]'` (numpy, tokenizers, jinja2, onnxruntime);
no torch, transformers or web server.
"""
import sys

from slm.runtime import Engine, SamplingParams


def main(package: str) -> None:
    engine = Engine(package)                        # model.onnx + tokenizer; CUDA if available, else CPU
    greedy = SamplingParams(temperature=0.0)        # or temperature=0.7, top_p=0.9, seed=1, ...

    # A chat, streamed token by token. The last event says why it stopped, and the counts.
    messages = [{"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "Name three primary colours."}]
    for event in engine.generate(messages, params=greedy, max_tokens=32):
        print(event.text, end="", flush=True)
    print(f"\n[{event.prompt_tokens} prompt + {event.generated_tokens} generated tokens, "
          f"{event.tokens_per_s:.0f} tokens/s, finish: {event.finish_reason}]")

    # Plain text completion (no chat template), with a stop string, on an independent KV cache.
    cache = engine.new_cache()
    events = list(engine.generate("The sky is", raw=True, params=greedy, max_tokens=16, stop=["."], cache=cache))
    print("completion:", repr("".join(e.text for e in events)), events[-1].finish_reason)


if __name__ == "__main__":
    main(sys.argv[1])
