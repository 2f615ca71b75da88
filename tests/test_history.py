"""The monitor's task history, its search syntax and the client's text of the arguments (pure code)."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

from jupyter_plb.core import parameters, protocol
from jupyter_plb.core.argsrepr import MAX_LENGTH, args_text
from jupyter_plb.core.history import MAX_OUTPUT, MAX_TRACEBACK, FinishedTask, History, clip, record
from jupyter_plb.core.taskquery import QueryError, SearchFields, parse
from jupyter_plb.core.tasks import Task, TaskState
from jupyter_plb.errors import ParametersError


def finished(task_id: str, ended: float, state: TaskState = TaskState.DONE, **result: object) -> tuple[Any, ...]:
    task = Task(id=task_id, user="alice", priority=0.0, name="f", route=None, args="1, 2", submitted=ended - 3)
    task.state, task.started, task.ended, task.worker, task.hub = state, ended - 1, ended, "worker_a", "hub_a"
    task.result = dict(result)
    return record(task)


# -- History -------------------------------------------------------------------------------------
def test_a_failed_record_keeps_traceback_output_arguments_and_timings() -> None:
    error = {"type": "RuntimeError", "message": "kaput", "traceback": "Traceback …\nRuntimeError: kaput\n"}
    kept = FinishedTask._make(finished("t_1", 100.0, TaskState.FAILED, error=error, stdout="hello\n", stderr="warn\n"))
    detail = kept.detail()
    assert detail["error"] == "RuntimeError: kaput"
    assert detail["traceback"].endswith("RuntimeError: kaput\n")
    assert (detail["stdout"], detail["stderr"], detail["args"]) == ("hello\n", "warn\n", "1, 2")
    assert (detail["submitted"], detail["started"], detail["ended"]) == (97.0, 99.0, 100.0)
    assert (detail["wait_time"], detail["run_time"]) == (2.0, 1.0)
    assert (detail["worker"], detail["hub"]) == ("worker_a", "hub_a")
    assert (detail["state"], detail["progress"]) == ("failed", None)


def test_size_bound_drops_the_oldest() -> None:
    history = History(size=3, age=1000)
    for i in range(5):
        history.add(finished(f"t_{i}", 100.0 + i))
    assert [r.id for r in history.newest()] == ["t_4", "t_3", "t_2"]
    assert history.get("t_1") is None and history.get("t_2") is not None


def test_age_bound_drops_what_ended_too_long_ago() -> None:
    history = History(size=100, age=10)
    for i in range(5):
        history.add(finished(f"t_{i}", 100.0 + i))
    history.expire(111.5)
    assert [r.id for r in history.newest()] == ["t_4", "t_3", "t_2"]
    history.expire(1000.0)
    assert len(history) == 0 and history.text_size == 0


def test_text_budget_bounds_the_output_held() -> None:
    history = History(size=100, age=1000, text_budget=3 * MAX_OUTPUT)
    for i in range(10):
        history.add(finished(f"t_{i}", 100.0 + i, stdout="x" * (10 * MAX_OUTPUT)))
    assert 0 < history.text_size <= 3 * MAX_OUTPUT
    assert len(history) == 2 and history.get("t_9") is not None


def test_a_task_that_finishes_again_is_the_newest_once() -> None:
    history = History(size=10, age=1000)
    history.add(finished("t_a", 100.0))
    history.add(finished("t_b", 101.0))
    history.add(finished("t_a", 102.0, TaskState.FAILED, error={"type": "E", "message": "m"}))
    assert [(r.id, r.state) for r in history.newest()] == [("t_a", "failed"), ("t_b", "done")]


def test_records_are_plain_tuples_the_garbage_collector_lets_go() -> None:
    history = History(size=10, age=1000)
    history.add(finished("t_a", 100.0, stdout="out"))
    gc.collect()
    stored = next(iter(history._records.values()))
    assert type(stored) is tuple and not gc.is_tracked(stored)


def test_clip_keeps_head_and_tail_within_the_limit() -> None:
    text = "HEAD" + "x" * 100_000 + "TAIL"
    clipped = clip(text, MAX_TRACEBACK)
    assert clipped is not None and clipped.startswith("HEAD") and clipped.endswith("TAIL")
    assert len(clipped) < MAX_TRACEBACK + 100 and "characters cut" in clipped
    assert clip("short", 10) == "short" and clip("", 10) is None and clip(42, 10) is None


def test_a_malformed_error_from_a_worker_is_kept_as_text() -> None:
    kept = FinishedTask._make(finished("t_x", 100.0, TaskState.FAILED, error="plain string", stdout=["x"]))
    assert (kept.error, kept.traceback, kept.stdout) == ("plain string", None, None)


def test_history_parameters_are_validated() -> None:
    params = parameters.load(LB_HISTORY_SIZE=5, LB_HISTORY_AGE=60)
    assert (params["LB_HISTORY_SIZE"], params["LB_HISTORY_AGE"]) == (5, 60)
    assert parameters.load()["LB_HISTORY_SIZE"] == 10_000
    with pytest.raises(ParametersError, match="LB_HISTORY_SIZE: must be an integer >= 0"):
        parameters.load(LB_HISTORY_SIZE=-1)
    with pytest.raises(ParametersError, match="LB_HISTORY_AGE: must be a number > 0"):
        parameters.load(LB_HISTORY_AGE="1 day")


# -- search syntax ---------------------------------------------------------------------------------
def fields(state: str = "failed", name: str = "simulate", user: str = "alice", error: str | None = None,
           args: str | None = None, task_id: str = "t_0123abcd") -> SearchFields:
    return SearchFields(task_id, name, user, state, "worker_1", "hub_1", error, args)


def test_flower_states_and_names() -> None:
    query = parse("state:FAILURE name:simu")
    assert query.states == {"failed"} and query.matches(fields())
    assert not query.matches(fields(state="done")) and not query.matches(fields(name="other"))
    assert parse("state:SUCCESS").states == {"done"}
    assert parse("state:REVOKED").states == {"cancelled"}
    assert parse("state:PENDING,STARTED").states == {"queued", "running"}


def test_multi_state_and_exact_user() -> None:
    query = parse("state:failed,cancelled user:alice")
    assert query.states == {"failed", "cancelled"} and query.users == {"alice"}
    assert query.matches(fields(state="cancelled")) and not query.matches(fields(state="done"))
    assert not query.matches(fields(user="alice2"))
    assert parse("state:failed state:cancelled").states == {"failed", "cancelled"}
    assert parse("user:alice,bob").matches(fields(user="bob"))


def test_plain_words_match_name_id_error_and_arguments_all_of_them() -> None:
    task = fields(error="RuntimeError: kaput", args="42, mode='fast'")
    for words in ("kaput", "0123ab", "SIMUL", "mode='fast'", "RuntimeError: kaput", "kaput 42"):
        assert parse(words).matches(task), words
    assert not parse("kaput nothere").matches(task)
    assert parse('"error: kaput"').words == ("error: kaput",)
    assert parse('name:"my task"').matches(fields(name="run my task now"))


def test_keyed_terms_search_their_field_only() -> None:
    task = fields(error="ValueError: bad", args="7")
    assert parse("error:valueerror").matches(task)
    assert not parse("error:simulate").matches(task)
    assert parse("args:7 worker:worker_1 hub:hub").matches(task)
    assert parse("exception:bad kwargs:7").matches(task)
    assert not parse("args:8").matches(task)


def test_parameters_and_query_both_apply() -> None:
    query = parse("state:failed,done", state="failed", user="alice", name="simulate")
    assert query.states == {"failed"} and query.names == {"simulate"}
    assert query.matches(fields()) and not query.matches(fields(name="simulate2"))
    assert parse("user:bob", user="alice").users == frozenset()
    assert parse(state="finished").states == {"done", "failed", "cancelled"}


def test_which_tables_a_query_needs() -> None:
    assert parse("state:failed").wants_finished and not parse("state:failed").wants_live
    assert parse("state:running").wants_live and not parse("state:running").wants_finished
    assert parse("kaput").wants_live and parse("kaput").wants_finished


def test_bad_queries_say_what_to_write() -> None:
    with pytest.raises(QueryError, match=r"unknown task state 'bogus'; use one of .*failure"):
        parse("state:bogus")
    with pytest.raises(QueryError, match="state: needs a state"):
        parse('state:""')
    with pytest.raises(QueryError, match="unknown task state"):
        parse(state="failed,nope")
    with pytest.raises(QueryError, match="longer than"):
        parse("x" * 5000)


# -- the client's text of the arguments -------------------------------------------------------------
def test_arguments_text_is_short_whatever_the_arguments() -> None:
    assert args_text((1, "a", 2.5), {"k": None}) == "1, 'a', 2.5, k=None"
    big = args_text((list(range(10**6)), "s" * 10**6, b"b" * 10**7, 10**10000), {"d": {"a": {"b": {"c": 1}}}})
    assert len(big) <= MAX_LENGTH and big.startswith("[0, 1, 2, 3, 4, 5, ...]")
    assert args_text((np.zeros((300, 4)),)) == "ndarray(shape=(300, 4))"
    assert args_text(protocol.call_payload((b"z" * 10**6,), {})[0]) == "<bytes of 1000000>"
    assert args_text([(0,), (1,)]) == "(0,), (1,)"


def test_arguments_whose_repr_raises_or_is_huge() -> None:
    class Loud:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    class Verbose:
        def __repr__(self) -> str:
            return "v" * 10**6

    assert args_text((Loud(),)).startswith("<Loud")
    assert len(args_text((Verbose(),))) <= MAX_LENGTH
