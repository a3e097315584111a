"""Push one large job through the client: many requests, results as they finish, resumable.

Input is OpenAI's batch format, one JSON object a line::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [...], "max_tokens": 100}}

or the bare body (``{"model": ..., "messages": ...}``), whose id is ``line-<N>``.
Each result is appended to the output file as one whole line as soon as it is
done. Given the same output file again, a batch skips every id the file already
holds, so nothing is paid for twice; a last line cut short by a crash is
dropped first. ::

    from maxllm_gate.batch import Batch

    async with maxllm_gate.from_env() as client:
        summary = await Batch(client, "in.jsonl", output="out.jsonl", on_result=print)
        # or, as they finish:
        async with Batch(client, "in.jsonl", output="out.jsonl") as results:
            async for result in results:
                ...
"""

from maxllm_gate.batch.requests import (
    BatchRequest,
    InvalidLine,
    count_lines,
    parse_request,
    read_requests,
)
from maxllm_gate.batch.results import BatchResult, ResultsFile
from maxllm_gate.batch.runner import Batch, BatchStats, ModelUsage, OnResult

__all__ = [
    "Batch",
    "BatchRequest",
    "BatchResult",
    "BatchStats",
    "InvalidLine",
    "ModelUsage",
    "OnResult",
    "ResultsFile",
    "count_lines",
    "parse_request",
    "read_requests",
]
