"""Model providers: one small interface (`Provider.complete`), two providers.

`openai` talks to any OpenAI-compatible chat-completions endpoint through the
official SDK; `scripted` replays a file of assistant messages. Both produce
the SDK's `ChatCompletion`, and `base.parse_completion` turns that into the
`ModelReply` the agent loop reads, so everything after the wire is one path.
"""

from orchestrator.agent.providers.base import (
    ModelError,
    ModelReply,
    ModelRequest,
    ModelToolCall,
    Provider,
    TokenUsage,
    ToolSpec,
    parse_completion,
)

__all__ = [
    "ModelError",
    "ModelReply",
    "ModelRequest",
    "ModelToolCall",
    "Provider",
    "TokenUsage",
    "ToolSpec",
    "parse_completion",
]
