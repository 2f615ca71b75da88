"""What each piece of a W2 round trip costs alone, in this process (best of several timeit runs, µs).

    python benchmarks/micro.py

The same messages a round trip sends (a one-task submit, its tasks message, its results, the
client's results), signed and verified by ``protocol.Session`` as the processes do; the SQLite
journal's two group commits per round trip (the submit batch, the result batch); the scheduler's
part; the client's task spec. Best-of timings are what the code costs on an idle core; on a busy
machine a round trip pays more, which ``run.py --profile`` shows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import workloads  # noqa: E402

from jupyter_plb.core import protocol  # noqa: E402
from jupyter_plb.core.scheduler import Scheduler  # noqa: E402
from jupyter_plb.core.store import SqliteStore  # noqa: E402
from jupyter_plb.core.tasks import Task, TaskState  # noqa: E402


def best(fn: Callable[[], Any], number: int = 2000, repeat: int = 7) -> float:
    """µs per call, the best of ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def messages() -> dict[str, tuple[dict[str, Any], list[protocol.Buffer]]]:
    """The headers and buffers of the four data-path messages of one noop round trip."""
    args = protocol.dumps(((1,), {}))
    fn = protocol.dumps(workloads.noop)
    fn_id = "f" * 32
    submit = {
        "type": "submit", "fns": [{"fn": fn_id, "nbuf": 1, "origin": "Python 3.11.7, cloudpickle 3.1.1"}],
        "tasks": [{"id": "t_0123456789abcdef1", "name": "noop", "fn": fn_id, "user": "bench", "priority": 0,
                   "nbuf": 1, "args": "1", "timeout": None, "retries": 0}],
        "reply_to": "client_0123456789abcdef1", "req": "r12",
    }
    tasks = {"type": "tasks", "tasks": [{"id": "t_0123456789abcdef1", "nbuf": 1, "short": True, "fn": fn_id}]}
    result = protocol.dumps(1)
    info = {"id": "t_0123456789abcdef1", "started": 1.7e9, "ended": 1.7e9, "nbuf": 1, "state": "done"}
    results_w = {"type": "results", "worker": "worker_0123456789abcdef1", "results": [info]}
    results_c = {"type": "results", "results": [{
        "id": "t_0123456789abcdef1", "state": "done", "progress": 100, "worker": "worker_0123456789abcdef1",
        "hub": "hub_0123456789abcdef1", "started": 1.7e9, "ended": 1.7e9, "nbuf": 1,
    }]}
    return {
        "submit": (submit, [*fn, *args]),
        "tasks": (tasks, list(args)),
        "results (worker)": (results_w, list(result)),
        "results (client)": (results_c, list(result)),
    }


def protocol_costs() -> dict[str, float]:
    out: dict[str, float] = {}
    key = os.urandom(32).hex().encode()
    for name, (header, buffers) in messages().items():
        sender, receiver = protocol.Session(key), protocol.Session(key)
        out[f"serialize {name}"] = best(lambda h=header, b=buffers, s=sender: s.serialize(dict(h), b))
        frames = [bytes(f) for f in sender.serialize(dict(header), buffers)]
        out[f"  of which json.dumps {name}"] = best(lambda h=header: json.dumps(h, separators=(",", ":")).encode())
        produced = [[bytes(f) for f in sender.serialize(dict(header), buffers)] for _ in range(20000)]
        it = iter(produced)
        out[f"deserialize {name} (no buffer hash)"] = best(
            lambda it=it, r=receiver: r.deserialize(next(it), verify=False), number=2000, repeat=5
        )
        head = json.dumps(header, separators=(",", ":")).encode()
        out[f"  of which json.loads {name}"] = best(lambda h=head: json.loads(h))
        out[f"  envelope bytes {name}"] = float(len(frames[0]))
    out["hmac-sha256 of 300 bytes"] = best(lambda: hmac.digest(key, b"x" * 300, "sha256"))
    out["sha256 of a 30-byte buffer"] = best(lambda: hashlib.sha256(b"x" * 30).digest())
    return out


def journal_costs() -> dict[str, float]:
    """µs per round trip: the submit batch (submitted + dispatched) and the result batch, committed."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "j.sqlite")
        counter = iter(range(10**9))
        args = protocol.dumps(((1,), {}))
        result = protocol.dumps(1)

        def submit_batch() -> Task:
            i = next(counter)
            task = Task(id=f"t{i}", user="u", priority=0, name="noop", route=None, seq=i + 1, fn="f" * 32,
                        args="1", buffers=tuple(args), submitted=1.7e9)
            store.submitted(task)
            task.state, task.worker = TaskState.RUNNING, "w"
            store.state(task)
            store.commit(lambda: None)
            return task

        tasks: list[Task] = []
        submit = best(lambda: tasks.append(submit_batch()), number=500, repeat=5)
        pending = iter(tasks)

        def result_batch() -> None:
            task = next(pending)
            task.state, task.ended, task.result, task.result_buffers = TaskState.DONE, 1.7e9, {}, tuple(result)
            store.finished(task)
            store.commit(lambda: None)

        finish = best(result_batch, number=500, repeat=5)
        store.close()
    return {"journal: submit batch (insert + update, commit)": submit,
            "journal: result batch (update, commit)": finish}


def scheduler_costs() -> dict[str, float]:
    scheduler = Scheduler(max_queued_per_user=0)
    scheduler.add_slot("w", "hub", -1e9, 1e9, frozenset())
    counter = iter(range(10**9))

    def one() -> None:
        task = Task(id=f"t{next(counter)}", user="u", priority=0, name="noop", route=None)
        scheduler.submit(task)
        (slot, got), = scheduler.dispatch(True)
        scheduler.release(slot.id, got.id)

    return {"scheduler: submit + dispatch + release": best(one)}


def client_costs() -> dict[str, float]:
    from jupyter_plb.core.argsrepr import args_text

    payload = protocol.call_payload((1,), {})
    return {
        "client: pickle (args, kwargs)": best(lambda: protocol.dumps(payload)),
        "client: args_text": best(lambda: args_text(*payload)),
        "client: new_id": best(lambda: protocol.new_id("t")),
    }


def main() -> None:
    figures = {**protocol_costs(), **journal_costs(), **scheduler_costs(), **client_costs()}
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        unit = "bytes" if "bytes " in name and "envelope" in name else "µs"
        print(f"{name:<{width}}  {value:8.2f} {unit}")


if __name__ == "__main__":
    main()
