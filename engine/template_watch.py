"""Noticing a backend whose chat template does not fit, and saying so once.

A misconfigured template fails silently: llama.cpp's `llama-server --jinja
--chat-template gemma` takes the word "gemma" as the whole template, so the model sees
almost nothing of the prompt (it reports `prompt_tokens` of 3 against Fellowship's
estimate of hundreds) and answers at random; a layout the model never learnt
(`mistral-v1` for a ChatML model) makes every reply come back empty. Either way the
conversation fills with noise or tombstones and nobody is told why.

`TemplateWatch` follows one session's bot calls. When `TEMPLATE_CHECK_CALLS` calls in a
row report a prompt below `TEMPLATE_CHECK_RATIO` of the local estimate, or
`TEMPLATE_CHECK_EMPTY_REPLIES` replies in a row are empty after cleaning, it returns one
`BackendTemplateMismatch` saying what was seen and what to try; the turn hands it to
the session's `warn`, which logs it, adds it to the session's warnings (shown by status
and the console) and emits it as an `error` event with code `backend_template_mismatch`.
It reports once per session; the prompt check stops once as many calls in a row looked
right, since a template does not change during a session.
"""

from __future__ import annotations

from typing import Final

from engine.errors import BackendTemplateMismatch
from engine.llm.types import ChatRequest, Usage
from engine.tokens import TokenCounter

TEMPLATE_MISMATCH: Final = BackendTemplateMismatch.code

# A broken template cuts the prompt to a fraction of its size; a working one counts
# within tens of percent of our estimate, so a quarter leaves room for either side.
TEMPLATE_CHECK_RATIO: Final = 0.25
# Below this estimate a short count may be honest (and the ratio is noisy).
TEMPLATE_CHECK_MIN_PROMPT_TOKENS: Final = 64
# Calls in a row with a short prompt before it is reported.
TEMPLATE_CHECK_CALLS: Final = 2
# Replies in a row empty after cleaning (retries included) before it is reported.
TEMPLATE_CHECK_EMPTY_REPLIES: Final = 4

_PROMPT_ADVICE: Final = (
    "its chat template probably leaves most of the prompt out. With llama.cpp, a template "
    "name given with --jinja is read as the template itself: use --jinja alone (the "
    "model's own template) or a built-in name without --jinja (--chat-template NAME), "
    "or another template."
)
_EMPTY_ADVICE: Final = (
    "the backend's chat template probably does not fit the model, which then ends its "
    "turn at once. Try the model's own template (llama.cpp: --jinja) or another "
    "--chat-template."
)


class TemplateWatch:
    """Watches one session's bot calls for signs of a broken chat template."""

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self.reported = False
        self._short_prompts = 0
        self._healthy_prompts = 0
        self._empty_replies = 0

    def observe_call(
        self, request: ChatRequest, usage: Usage | None
    ) -> BackendTemplateMismatch | None:
        """Compare the backend's prompt count of one bot call with the local estimate.

        Returns the mismatch the first time it is clear, else None.
        """
        if self.reported or usage is None or usage.prompt_tokens <= 0:
            return None
        if self._healthy_prompts >= TEMPLATE_CHECK_CALLS:
            return None
        estimate = self._counter.count_chat(request.messages)
        if usage.prompt_tokens >= TEMPLATE_CHECK_RATIO * estimate:
            self._short_prompts = 0
            self._healthy_prompts += 1
            return None
        if estimate < TEMPLATE_CHECK_MIN_PROMPT_TOKENS:
            return None  # too small a prompt to call its count too short
        self._healthy_prompts = 0
        self._short_prompts += 1
        if self._short_prompts >= TEMPLATE_CHECK_CALLS:
            return self._report(
                f"The backend counted {usage.prompt_tokens} prompt tokens where Fellowship "
                f"estimates {estimate}, on {self._short_prompts} calls in a row: " + _PROMPT_ADVICE
            )
        return None

    def observe_reply(self, *, empty: bool) -> BackendTemplateMismatch | None:
        """Count replies that were empty after cleaning, in a row.

        Returns the mismatch the first time it is clear, else None.
        """
        if self.reported:
            return None
        if not empty:
            self._empty_replies = 0
            return None
        self._empty_replies += 1
        if self._empty_replies >= TEMPLATE_CHECK_EMPTY_REPLIES:
            return self._report(
                f"{self._empty_replies} replies in a row were empty after cleaning: "
                + _EMPTY_ADVICE
            )
        return None

    def _report(self, message: str) -> BackendTemplateMismatch:
        self.reported = True
        return BackendTemplateMismatch(message)
