"""The agent loop's shell: one unit of work per call (a model call or a tool
call), appended to the session's stream, decided by `agent.next_action`.

`advance` is what the `orchestrator.agent_advance` task runs; it returns
"continue" when there is more to do (the task enqueues itself again), so
every model call and every tool call is its own Celery task, and a crash
anywhere resumes from the log on any worker: a model turn whose reply was
not recorded is asked again under the same idempotency key, a tool call goes
through the runner's exactly-once machinery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from events import payloads as p
from events.envelope import Event
from events.history import history
from events.projections import AgentState, Projections
from orchestrator.agent import core as agent
from orchestrator.agent.providers.base import ModelError, ModelReply, ModelRequest, Provider
from orchestrator.guard.masking import mask
from orchestrator.ops import logs, tracing
from orchestrator.run.jobspec import AgentSpec
from orchestrator.run.runner import Runner, Ticket

__all__ = ["AgentLoop"]
_log = logs.get_logger(__name__)


@dataclass
class AgentLoop:
    runner: Runner
    provider_for: Callable[[AgentSpec], Provider]
    default_provider: str = "scripted"
    default_model: str = "gpt-4o-mini"  # for providers other than scripted
    secrets: tuple[str, ...] = ()
    store_content: bool = True  # False: prompt_storage = digest (replies as digests)
    _providers: dict[str, Provider] = field(default_factory=dict, init=False, repr=False)

    def advance(self, ticket: Ticket, task_id: str | None = None) -> str:
        """Do the next unit of work; "continue", or the state it stopped in
        ("waiting", "idle", "completed", "failed")."""
        return self.runner._retrying(self._advance, ticket, task_id)  # type: ignore[no-any-return]

    def _advance(self, ticket: Ticket, task_id: str | None) -> str:
        r = self.runner
        sid = ticket.session_id
        logs.bind(job_id=ticket.job_id, session_id=sid)
        cause = f"task:{task_id}" if task_id else None
        state = r.load(sid)
        if state.session.status == "new":
            state = r.absorb(sid, state, r._start(ticket, state, cause))
        state = r.stop_if_cancelled(ticket, state, cause)
        if state.session.agent is None and not state.session.finished:
            spec = AgentSpec.model_validate(ticket.agent or {})
            state = r.absorb(
                sid,
                state,
                r._append(
                    sid,
                    [self.started(spec, state, ticket.tier)],
                    state.last_seq,
                    "agent:started",
                    ticket.job_id,
                    cause,
                ),
            )
        action = agent.next_action(state)
        if action.kind == "done":
            s = state.session
            if s.finished:
                r.report(ticket.job_id, sid, s.status, cause, ticket.sessions_total)
            return s.status
        if action.kind in ("wait", "idle"):
            return "waiting" if action.kind == "wait" else "idle"
        if action.kind == "tool":
            assert action.step is not None
            # Not run_step, whose retry on a lost race runs this step again: the
            # loser must decide again (a chat's Ctrl-C may have cancelled the turn).
            status = r._run_step(ticket, action.turn - 1, action.step, False, task_id)
            return "continue" if status == "running" else status
        if action.kind == "model":
            self._model_turn(ticket, state, action.model_turn, cause)
            return "continue"
        if action.kind == "finish":
            s = state.session
            self._end(
                ticket,
                state,
                [p.SessionCompleted(files_changed=s.files_count)],
                "session:completed",
                cause,
            )
            return "completed"
        self._end(
            ticket,
            state,
            [p.SessionFailed(error=action.error, message=action.message)],
            "session:failed",
            cause,
        )
        return "failed"

    def started(
        self, spec: AgentSpec, state: Projections, tier: str | None, mode: str = "job"
    ) -> p.AgentStarted:
        s = state.session
        instruction = mask(spec.instruction, self.secrets)
        return p.AgentStarted(
            # Kept in digest mode too: the next model turn needs it (and the
            # job's own JobSubmitted holds it anyway); only replies are digested.
            instruction=instruction,
            instruction_digest=agent.digest(spec.instruction),
            mode=mode,  # type: ignore[arg-type]
            provider=(kind := spec.provider or self.default_provider),
            model=spec.model or (self.default_model if kind != "scripted" else "scripted"),
            max_turns=spec.max_turns,
            max_invalid_calls=spec.max_invalid_calls,
            token_budget=spec.token_budget,
            prompt_version=agent.prompt_version(),
            tools=agent.tools_for_tier(
                s.tier or tier, network=self.runner.policy_of(s).doc.network.enabled
            ),
        )

    def _model_turn(self, ticket: Ticket, state: Projections, n: int, cause: str | None) -> None:
        """Model turn `n`: record the request, ask the provider, record the reply
        (or end the session when the call cannot succeed)."""
        a = state.session.agent
        assert a is not None
        pol = self.runner.policy_of(state.session)
        # The whole conversation, from the stream: the live state keeps its end only.
        told = history(
            self.runner.store, ticket.session_id, agent.PROMPT_TYPES, upto=state.last_seq
        )
        msgs = agent.messages(told, pol.doc.network.for_shell)
        request = ModelRequest(model=a.model, messages=msgs, tools=agent.tool_specs(a.tools))
        seq = self._record_request(ticket, state, n, msgs, cause)
        provider = self._provider(ticket)
        started = time.monotonic()
        try:
            reply = self._complete(provider, request, a, n)
        except ModelError as exc:
            self.runner.observer.model_call(a.model, "error", time.monotonic() - started)
            _log.warning(
                "model call failed",
                model=a.model,
                model_turn=n,
                error=exc.error,
                transient=exc.transient,
            )
            if exc.transient:
                raise  # the task retries it later (countdown: Retry-After)
            self.fail_model(ticket, n, exc, cause)
            return
        latency = time.monotonic() - started
        self._observe_reply(a.model, n, reply, latency)
        self._record_reply(ticket, state, n, reply, latency, seq, cause)

    def _record_request(
        self,
        ticket: Ticket,
        state: Projections,
        n: int,
        msgs: list[dict[str, Any]],
        cause: str | None,
    ) -> int:
        """Append ModelRequested before the call, so a crash mid-call is on record;
        the seq the reply is appended after."""
        a = state.session.agent
        assert a is not None
        stored = self.runner._append(
            ticket.session_id,
            [
                p.ModelRequested(
                    model_turn=n,
                    provider=a.provider,
                    model=a.model,
                    messages=len(msgs),
                    prompt_digest=agent.digest(msgs),
                    trace_id=tracing.current_trace_id(),
                )
            ],
            state.last_seq,
            f"model:{n}:requested",
            ticket.job_id,
            cause,
        )
        return stored[-1].seq

    def _complete(
        self, provider: Provider, request: ModelRequest, a: AgentState, n: int
    ) -> ModelReply:
        """The provider's answer, inside a GenAI tracing span with its token usage."""
        with tracing.span(
            f"model {a.model}",
            **{
                "gen_ai.system": a.provider,
                "gen_ai.request.model": a.model,
                "orchestrator.model_turn": n,
            },
        ) as span:
            reply = provider.complete(request)
            if span is not None:
                span.set_attributes(
                    {
                        "gen_ai.usage.input_tokens": reply.usage.input_tokens,
                        "gen_ai.usage.output_tokens": reply.usage.output_tokens,
                    }
                )
        return reply

    def _observe_reply(self, model: str, n: int, reply: ModelReply, latency: float) -> None:
        """Metrics and a log line for a model call that answered."""
        observer = self.runner.observer
        observer.model_call(model, "ok", latency)
        observer.model_tokens(model, "input", reply.usage.input_tokens)
        observer.model_tokens(model, "output", reply.usage.output_tokens)
        observer.model_tokens(model, "cached", reply.usage.cached_tokens or 0)
        _log.info(
            "model call",
            model=model,
            model_turn=n,
            seconds=round(latency, 6),
            input_tokens=reply.usage.input_tokens,
            output_tokens=reply.usage.output_tokens,
        )

    def _record_reply(
        self,
        ticket: Ticket,
        state: Projections,
        n: int,
        reply: ModelReply,
        latency: float,
        seq: int,
        cause: str | None,
    ) -> None:
        """Append ModelResponded: the reply masked, its tool calls numbered after
        the session's steps and turns so far."""
        s = state.session
        a = s.agent
        assert a is not None
        base = max([s.steps_count, *(t.turn for t in s.turns)])
        calls, _ = agent.tool_calls_of(reply, a.tools, base, self.secrets)
        content = mask(reply.content, self.secrets) if reply.content else None
        self.runner._append(
            ticket.session_id,
            [
                p.ModelResponded(
                    model_turn=n,
                    model=reply.model,
                    latency_s=round(latency, 6),
                    attempts=reply.attempts,
                    finish_reason=reply.finish_reason,
                    input_tokens=reply.usage.input_tokens,
                    output_tokens=reply.usage.output_tokens,
                    cached_tokens=reply.usage.cached_tokens,
                    content=content if self.store_content else None,
                    content_digest=agent.digest(reply.content or ""),
                    tool_calls=tuple(p.ModelToolCall(**c) for c in calls),
                )
            ],
            seq,
            f"model:{n}:responded",
            ticket.job_id,
            cause,
        )

    def fail_model(self, ticket: Ticket, n: int, exc: ModelError, cause: str | None) -> None:
        """A model call that cannot succeed (or ran out of retries) ends the session."""
        attempts = getattr(exc, "attempts", 1)
        state = self.runner.load(ticket.session_id)
        self._end(
            ticket,
            state,
            [
                p.ModelFailed(
                    model_turn=n,
                    error=exc.error,
                    message=str(exc),
                    attempts=attempts,
                    transient=exc.transient,
                ),
                p.SessionFailed(error=exc.error, message=f"model turn {n} failed: {exc}"),
            ],
            f"model:{n}:failed",
            cause,
        )

    def _end(
        self, ticket: Ticket, state: Projections, events: list[Any], key: str, cause: str | None
    ) -> list[Event]:
        r = self.runner
        stored = r._append(ticket.session_id, events, state.last_seq, key, ticket.job_id, cause)
        status = "completed" if isinstance(events[-1], p.SessionCompleted) else "failed"
        r.report(ticket.job_id, ticket.session_id, status, cause, ticket.sessions_total)
        return stored

    def _provider(self, ticket: Ticket) -> Provider:
        spec = AgentSpec.model_validate(ticket.agent or {})
        key = agent.digest(spec.model_dump(mode="json"))
        found = self._providers.get(key)
        if found is None:
            found = self._providers[key] = self.provider_for(spec)
        return found
