"""A forged runner for F32: knocks on a runner port with hellos it has no right to send.

Run as ``python -m faults.forged_runner ADDR CASES_JSON`` (possibly under
another uid, e.g. ``setpriv --reuid 65534``). ``CASES_JSON`` is a list of
``{"name", "runner", "token", "job"}``; for each case it opens one ``Connect``
stream, sends the hello and, pipelined right after it, a forged success for
``job`` attempt 1, then reads until the stream ends. It prints one JSON object:
per case the status code name and how many hello_acks and executes it got.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import grpc
import grpc.aio

from rrq.v1 import runner_pb2 as pb
from rrq.v1 import runner_pb2_grpc as pb_grpc

FORGED_RESULT = '{"forged": true}'


async def knock(addr: str, runner: str, token: str, job: str) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(addr)
    acks = executes = 0
    try:
        hello = pb.RunnerMessage(
            hello=pb.RunnerHello(
                protocol_version=1,
                runner_name=runner,
                language="forged",
                handlers=["work", "poison", "spin"],
                max_in_flight=8,
                pid=os.getpid(),
                process_token=token,
            )
        )
        forged = pb.Outcome(job_id=job, attempt=1, success=pb.Success(result_json=FORGED_RESULT))
        # Both messages go out at once: the outcome arrives whether or not the
        # orchestrator has answered the hello yet.
        requests = [hello, pb.RunnerMessage(outcomes=pb.OutcomeBatch(outcomes=[forged]))]
        connect: Any = pb_grpc.RunnerServiceStub(channel).Connect
        call: Any = connect(iter(requests))
        try:
            async for message in call:
                kind = message.WhichOneof("kind")
                acks += kind == "hello_ack"
                executes += len(message.execute.requests) if kind == "execute" else 0
        except grpc.aio.AioRpcError as e:
            return {"code": e.code().name, "acks": acks, "executes": executes}
        code: grpc.StatusCode = await call.code()
        return {"code": code.name, "acks": acks, "executes": executes}
    finally:
        await channel.close(None)


async def main(addr: str, cases: list[dict[str, str]]) -> None:
    results = {}
    for case in cases:
        results[case["name"]] = await knock(addr, case["runner"], case["token"], case["job"])
    results["uid"] = {"code": str(os.getuid()), "acks": 0, "executes": 0}
    print(json.dumps(results, sort_keys=True), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
