"""The built-in example agent that ``asap serve`` runs when no ``--agent`` is given.

Skills:
    echo: answers with its input.
    stream: sends a few TaskUpdates (``{"steps": N}``, default 3), then completes.
    fail: raises the typed error whose code its input names (``{"code": "NOT_FOUND"}``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from asap.core.agent import Agent, Incoming
from asap.errors import AsapError, Code, InvalidArgument, error_class_for
from asap.v1 import payload_pb2, task_pb2


agent = Agent(
    "urn:asap:agent:example",
    name="Example",
    description="Echoes, streams progress, and fails on request.",
)


@agent.skill("echo", description="Answers with its input.")
def echo(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
    """Return the input unchanged (a plain function: it never waits, so it takes the fast path)."""
    return payload_pb2.TaskResponse(
        task_id=request.envelope.id,
        status=task_pb2.TASK_STATUS_COMPLETED,
        result=request.payload.input,
    )


@agent.skill(
    "stream", description='Sends {"steps": N} progress updates (default 3), then completes.'
)
async def stream(
    request: Incoming[payload_pb2.TaskRequest],
) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
    """Yield progress updates, then the final response."""
    steps_value = request.payload.input.fields.get("steps")
    steps = int(steps_value.number_value) if steps_value is not None else 3
    if not 0 < steps <= 1000:
        message = "steps must be between 1 and 1000"
        raise InvalidArgument(message)
    task_id = request.envelope.id
    for step in range(1, steps + 1):
        yield payload_pb2.TaskUpdate(
            task_id=task_id,
            update_type=task_pb2.UPDATE_TYPE_PROGRESS,
            status=task_pb2.TASK_STATUS_WORKING,
            progress_percent=100.0 * step / steps,
            message=f"step {step} of {steps}",
        )
    response = payload_pb2.TaskResponse(task_id=task_id, status=task_pb2.TASK_STATUS_COMPLETED)
    response.result.update({"steps": steps})
    yield response


@agent.skill(
    "fail", description='Raises the error whose code the input names: {"code": "NOT_FOUND"}.'
)
async def fail(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
    """Raise the typed error the input asks for."""
    name_value = request.payload.input.fields.get("code")
    name = name_value.string_value if name_value is not None else "INTERNAL"
    try:
        code = Code[name]
    except KeyError:
        message = f"unknown code {name!r}"
        raise InvalidArgument(message) from None
    if code is Code.OK:
        message = "OK is not an error"
        raise InvalidArgument(message)
    error: AsapError = error_class_for(code, None)(f"failing with {code.name} as asked")
    raise error
