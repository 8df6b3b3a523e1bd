"""User-facing errors. Each names the bad value and what would be accepted.

The CLI prints `error: <message>` for any `SlmError` and exits non-zero, never a traceback.
Stdlib only: the runtime imports this.
"""


class SlmError(Exception):
    """An error caused by the user's input, not by a bug in slm."""


class PackageError(SlmError):
    """A package folder is missing, corrupt, or of an unknown format version."""


class SourceError(SlmError):
    """A model source (HF folder, GGUF file, hub id) cannot be used."""


class PromptTooLongError(SlmError):
    """A prompt does not fit the model's context or the KV budget."""


class BudgetExceededError(SlmError):
    """The KV cache would exceed its budget and the policy is `none`."""


class ProviderFallbackWarning(RuntimeWarning):
    """The CUDA provider was there but did not start, so the engine runs on the CPU. The CLI and the
    chat print the engine's `provider_note` themselves and silence this; a library user sees it."""
