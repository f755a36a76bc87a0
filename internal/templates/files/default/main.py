"""The default RunAgent template: a mock agent.

Entrypoints (see runagent.config.json):
  minimal         mock_response(message, role="user") -> str
  minimal_stream  mock_response_stream(message, role="user") -> the same reply, word by word
"""

from typing import Iterator

from .mock_llm import MockLLM


def _conversation(message, role):
    # A list of {"role", "content"} dicts is taken as the whole conversation;
    # anything else as the text of one message.
    if isinstance(message, list) and all(isinstance(m, dict) for m in message):
        return message
    return [{"role": role, "content": str(message)}]


def mock_response(message, role="user"):
    """Return the mock model's whole reply to the message."""
    completion = MockLLM().complete(_conversation(message, role))
    print(f"mock_response: {completion.usage_tokens} tokens in {completion.response_time:.4f}s")
    return completion.content


def mock_response_stream(message, role="user") -> Iterator[str]:
    """Yield the mock model's reply to the message word by word."""
    for piece in MockLLM().stream(_conversation(message, role)):
        yield piece
