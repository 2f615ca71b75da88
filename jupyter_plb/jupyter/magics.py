"""IPython magics: ``%plb`` and ``%%plb`` send notebook code to the balancer and follow it.

``%load_ext jupyter_plb`` registers them. The client connects on first use, through
``$PLB_CONNECTION_FILE`` (or the file given to ``%plb connect``). Every subcommand has its own
``magic_arguments`` parser; the task options are one shared group. Bad input gives one
``UsageError`` line; a failed task shows its remote traceback.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import collections
import concurrent.futures
import contextlib
import math
import symtable
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    magics_class,
    needs_local_scope,
    no_var_expand,
)
from IPython.core.magic_arguments import argument, argument_group, magic_arguments
from IPython.display import display
from IPython.utils._process_common import arg_split

from jupyter_plb.client import display as show
from jupyter_plb.client.executor import ClientView, PlbFuture
from jupyter_plb.errors import PlbError

#: Seconds to wait for the balancer's answer when connecting.
CONNECT_TIMEOUT = 5.0
#: Futures the magics remember for ``%plb result/wait/cancel`` (beyond that, the oldest go).
REMEMBERED = 100_000
CELL_FILE = "<plb cell>"
CELL_NAME = "<cell>"
#: Futures display as live widgets in a kernel (looked up by name: no import at load time).
FUTURE_TYPE = ("jupyter_plb.client.futures", "PlbFuture")

Namespace = dict[str, Any]


# -- shared option groups (ipyparallel style) ------------------------------------------------------
def positive(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def identifier(text: str) -> str:
    """argparse type: a notebook variable name."""
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not a Python variable name")
    return text


def _apply(func: Any, decorators: list[Any]) -> Any:
    for deco in reversed(decorators):  # keep source order in the parser
        func = deco(func)
    return func


def task_options(func: Any) -> Any:
    """``-p/--priority``, ``-u/--user``, ``--timeout``, ``--retries``, ``-o/--out``."""
    return _apply(
        func,
        [
            argument_group("task options"),
            argument("-p", "--priority", type=float, help="task priority (workers take a range of them)"),
            argument("-u", "--user", help="the fairness bucket (default: $PLB_USER or your login)"),
            argument("--timeout", type=positive, metavar="SECONDS", help="kill the task after SECONDS"),
            argument("--retries", type=int, metavar="N", help="retry N times if its worker dies"),
            argument(
                "-o",
                "--out",
                type=identifier,
                metavar="NAME",
                help="also store the future(s) in notebook variable NAME",
            ),
        ],
    )


def wait_options(func: Any) -> Any:
    """``--timeout`` for the subcommands that wait for results."""
    return argument("--timeout", type=positive, metavar="SECONDS", help="give up waiting after SECONDS")(func)


# -- parsing and evaluating notebook code ----------------------------------------------------------
def _tokens(text: str) -> list[tuple[str, int, int]]:
    """IPython's shell-like split, with each token's span in ``text``."""
    try:
        parts = arg_split(text)
    except ValueError as exc:
        raise UsageError(f"cannot split {text!r}: {exc}") from None
    spans, position = [], 0
    for part in parts:
        start = text.find(part, position)
        if start < 0:
            raise UsageError(f"cannot read {text!r}; put options before the Python expression")
        position = start + len(part)
        spans.append((part, start, position))
    return spans


def parse_with_expression(handler: Any, text: str) -> argparse.Namespace:
    """Options and a trailing Python expression (``expr``), kept as typed.

    Options go before the expression, or after it (``%plb map f xs --chunksize 10``).
    """
    parser = handler.parser
    spans = _tokens(text)
    words = [word for word, _, _ in spans]
    args = parser.parse_args(words)
    first = len(words) - len(args.expr)
    last = len(words)
    known = set(parser._option_string_actions)
    for index in range(first + 1, len(words)):
        if words[index] not in known:
            continue
        with contextlib.suppress(UsageError):
            trailing = parser.parse_args(words[:first] + words[index:])
            if not trailing.expr:
                args, last = trailing, index
                break
    args.expr = text[spans[first][1] : spans[last - 1][2]].strip() if first < last else ""
    return args


def _evaluate(node: ast.expr, ns: Namespace) -> Any:
    source = ast.unparse(node)
    try:
        return eval(compile(ast.Expression(node), "<plb>", "eval"), ns)
    except NameError as exc:
        raise UsageError(f"{exc} (in {source!r})") from None
    except Exception as exc:
        raise UsageError(f"evaluating {source!r} raised {type(exc).__name__}: {exc}") from None


def _expression(source: str, what: str) -> ast.expr:
    try:
        return ast.parse(source.strip(), mode="eval").body
    except SyntaxError as exc:
        raise UsageError(f"syntax error in {what} {source!r}: {exc.msg}") from None


def evaluate_call(source: str, ns: Namespace) -> tuple[Callable[..., Any], list[Any], dict[str, Any]]:
    """``f(x, *rest, y=1, **kw)`` → the callee and its arguments, evaluated in ``ns``."""
    call = _expression(source, "the call")
    if not isinstance(call, ast.Call):
        raise UsageError(f"expected a call like f(x, y=1), got {source!r}")
    fn = _evaluate(call.func, ns)
    if not callable(fn):
        raise UsageError(f"{ast.unparse(call.func)!r} is a {type(fn).__name__}, not a function")
    args: list[Any] = []
    for node in call.args:
        if isinstance(node, ast.Starred):
            args.extend(_evaluate(node.value, ns))
        else:
            args.append(_evaluate(node, ns))
    kwargs: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            kwargs.update(_evaluate(keyword.value, ns))
        else:
            kwargs[keyword.arg] = _evaluate(keyword.value, ns)
    return fn, args, kwargs


def split_function_and_iterable(source: str) -> tuple[str, str]:
    """``FUNC ITERABLE`` → the two expressions: the last split where both parse, so that
    ``lambda x: x + 1 range(5)`` keeps ``+ 1`` in the lambda."""
    for index in range(len(source) - 1, 0, -1):
        if source[index].isspace():
            head, tail = source[:index].strip(), source[index:].strip()
            if head and tail and _parses(head) and _parses(tail):
                return head, tail
    raise UsageError(f"expected a function and an iterable, like: %plb map f range(10); got {source!r}")


def _parses(source: str) -> bool:
    try:
        ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    return True


def cell_names(source: str) -> tuple[set[str], set[str]]:
    """The names a cell binds at its top level, and the global names it reads (any depth)."""
    top = symtable.symtable(source, CELL_FILE, "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_local()}
    read = {s.get_name() for s in top.get_symbols() if s.is_referenced()}
    tables = list(top.get_children())
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for sym in table.get_symbols():
            if sym.is_global():
                read.add(sym.get_name())
                if sym.is_declared_global() and sym.is_assigned():
                    bound.add(sym.get_name())
    return bound, read


class _TopLevel(ast.NodeTransformer):
    """Annotated assignments cannot name a ``global``: keep the value, drop the annotation."""

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.stmt:
        if node.value is None:
            return ast.copy_location(ast.Pass(), node)
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)


def cell_function(source: str, ns: Namespace) -> Callable[[], Any]:
    """The cell as a function whose globals are the notebook values it reads.

    Top-level assignments stay module-like (declared ``global``); the value of the last
    expression is returned. cloudpickle ships the function and those globals by value.
    """
    try:
        tree = ast.parse(source, CELL_FILE, "exec")
        bound, read = cell_names(source)
    except SyntaxError as exc:
        raise UsageError(f"syntax error in the cell, line {exc.lineno}: {exc.msg}") from None
    if not tree.body:
        raise UsageError("the cell is empty: write the code to run on a worker below %%plb submit")
    missing = sorted(n for n in read - bound if n not in ns and not hasattr(builtins, n))
    if missing:
        raise UsageError(f"name {missing[0]!r} is not defined in the notebook")
    body = [_TopLevel().visit(stmt) if isinstance(stmt, ast.AnnAssign) else stmt for stmt in tree.body]
    if isinstance(body[-1], ast.Expr):
        body[-1] = ast.copy_location(ast.Return(value=body[-1].value), body[-1])
    module = ast.parse("def __plb_cell__():\n    pass\n", CELL_FILE)
    function = module.body[0]
    assert isinstance(function, ast.FunctionDef)
    function.body = ([ast.Global(names=sorted(bound))] if bound else []) + body
    ast.fix_missing_locations(module)
    namespace: Namespace = {"__name__": "__main__", **{n: ns[n] for n in read if n in ns}}
    try:
        exec(compile(module, CELL_FILE, "exec"), namespace)
    except SyntaxError as exc:
        raise UsageError(f"the cell cannot run as a task, line {exc.lineno}: {exc.msg}") from None
    fn = namespace.pop("__plb_cell__")
    fn.__name__ = fn.__qualname__ = CELL_NAME
    return fn


def with_remote_traceback(exc: BaseException, fut: Any) -> BaseException:
    """Make IPython show a failed task's remote traceback instead of the local frames."""
    remote = show.remote_traceback(exc).rstrip()
    lines = [
        f"task {fut.task_id} ({fut.name}) failed on {fut.worker or 'a worker'}:",
        remote or f"{type(exc).__name__}: {exc}",
    ]
    exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    return exc


# -- a map in flight -------------------------------------------------------------------------------
class _Items:
    """A map's items, handed out until :meth:`MapView.stop` (then the batch has no more)."""

    def __init__(self, items: list[Any]) -> None:
        self._items = iter(items)
        self.stopped = False

    def __iter__(self) -> _Items:
        return self

    def __next__(self) -> Any:
        if self.stopped:
            raise StopIteration
        return next(self._items)


class MapView(ClientView):
    """A view that reports each future of a map as it is queued, so the magic counts and can
    cancel them without iterating ``map_futures`` (which feeds the queue by itself)."""

    def __init__(self, view: Any, items: list[Any], chunksize: int) -> None:
        super().__init__(view._connection, view._defaults)
        self.items = _Items(items)
        self.total = math.ceil(len(items) / chunksize)
        self.counter = show.BatchCounter(total=self.total)
        self.futures: list[PlbFuture] = []
        self._queued = threading.Condition()

    def _send_tasks(self, tasks: list[Any], fn_id: str, fn_buffers: list[Any]) -> None:
        futures = [fut for _, _, fut in tasks]
        with self._queued:  # a stop waits for a send in progress, so it can cancel what it sent
            if self.items.stopped:
                for fut in futures:  # pulled just before the stop: never sent
                    fut.state = "cancelled"
                    concurrent.futures.Future.cancel(fut)
                return
            super()._send_tasks(tasks, fn_id, fn_buffers)
            self.futures.extend(futures)
            self._queued.notify_all()
        self.counter.add(futures)

    def wait_queued(self) -> None:
        """Until every task is queued (at once, unless there are more than the per-user limit)."""
        with self._queued:
            self._queued.wait_for(lambda: len(self.futures) >= self.total or self.items.stopped)

    def stop(self) -> list[str]:
        """Queue nothing more; return the ids of the tasks still unfinished."""
        with self._queued:
            self.items.stopped = True
            self._queued.notify_all()
            pending = [f.task_id for f in self.futures if not f.done()]
        self.counter.close()
        return pending


# -- the magics ------------------------------------------------------------------------------------
@magics_class
class PlbMagics(Magics):
    """``%plb SUBCOMMAND …`` and ``%%plb submit``; see ``%plb?``."""

    shell: Any

    def __init__(self, shell: Any, connection_file: str | Path | None = None) -> None:
        super().__init__(shell)
        self.connection_file = connection_file
        self._client: Any = None
        self._futures: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._dashboards: list[Any] = []

    # -- the connection ---------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The magics' Client, connected on first use."""
        if self._client is None:
            from jupyter_plb.client.executor import Client

            try:
                self._client = Client(connection_file=self.connection_file, connect_timeout=CONNECT_TIMEOUT)
            except PlbError as exc:
                raise UsageError(f"no balancer reachable: {exc}") from None
        return self._client

    @contextlib.contextmanager
    def _balancer(self) -> Iterator[None]:
        """Errors from talking to the balancer become one UsageError line."""
        try:
            yield
        except PlbError as exc:
            raise UsageError(str(exc)) from None

    def close(self) -> None:
        """Close the dashboards, cancel the tasks still pending and disconnect."""
        for dashboard in self._dashboards:
            dashboard.close()
        self._dashboards.clear()
        if self._client is not None:
            self._client.shutdown(wait=False, cancel_futures=True)
            self._client = None

    # -- helpers -----------------------------------------------------------------------------------
    def _view(self, args: argparse.Namespace) -> Any:
        overrides = {
            k: getattr(args, k) for k in ("priority", "user", "timeout", "retries") if getattr(args, k) is not None
        }
        return self.client.options(**overrides) if overrides else self.client

    def _remember(self, futures: list[Any]) -> None:
        for fut in futures:
            self._futures[fut.task_id] = fut
        while len(self._futures) > REMEMBERED:
            self._futures.popitem(last=False)

    def _store(self, name: str | None, value: Any) -> None:
        if name is not None:
            self.shell.user_ns[name] = value

    def _lookup(self, token: str, ns: Namespace) -> list[Any] | None:
        """A task id or a notebook variable holding a future (or a list of them) → futures."""
        fut = self._futures.get(token) or (self._client.future(token) if self._client else None)
        if fut is not None:
            return [fut]
        if token.isidentifier() and token in ns:
            value = ns[token]
            items = value if isinstance(value, list | tuple) else [value]
            if items and all(isinstance(item, PlbFuture) for item in items):
                return list(items)
        return None

    def _progress(self, counter: show.BatchCounter, label: str, user: str) -> show.LiveProgress:
        """Show a batch live (a widget in a kernel, a text line elsewhere), fed by one thread."""
        from jupyter_plb.client.progress import live, running_tasks

        return live(counter, label, running_tasks(self.client._connection, user))

    def _wait(self, futures: list[Any], timeout: float | None, label: str) -> None:
        """Wait for futures (a progress view for several), then print their output and failures."""
        live = None
        if len(futures) > 1:
            counter = show.BatchCounter(futures)
            live = self._progress(counter, label, self.client.user)
        try:
            _, pending = concurrent.futures.wait(futures, timeout)
        finally:
            if live is not None:
                live.stop()
        show.print_outputs(futures)
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                print(f"{fut.task_id} {fut.name} failed: {fut.exception()!r}", file=sys.stderr)
        if pending:
            raise UsageError(f"{len(pending)} of {len(futures)} task(s) still unfinished after {timeout:g} s")

    # -- subcommands -------------------------------------------------------------------------------
    @magic_arguments(name="plb submit")
    @argument(
        "expr",
        nargs=argparse.REMAINDER,
        metavar="CALL",
        help="a call like f(x, y=1) (line magic); %%plb submit runs the cell instead",
    )
    @task_options
    def _submit(self, rest: str, cell: str | None, ns: Namespace) -> Any:
        """Run a call, or the cell, on a worker; return its future."""
        args = parse_with_expression(self._submit, rest)
        if cell is None:
            if not args.expr:
                raise UsageError("%plb submit needs a call, like: %plb submit f(x, y=1)")
            fn, fargs, fkwargs = evaluate_call(args.expr, ns)
        else:
            if args.expr:
                raise UsageError(f"%%plb submit takes only options on its line, not {args.expr!r}")
            fn, fargs, fkwargs = cell_function(cell, ns), [], {}
        view = self._view(args)
        with self._balancer():
            fut = view.submit(fn, *fargs, **fkwargs)
        self._remember([fut])
        self._store(args.out, fut)
        return fut

    @magic_arguments(name="plb map")
    @argument(
        "expr",
        nargs=argparse.REMAINDER,
        metavar="FUNC ITERABLE",
        help="a function and an iterable, e.g. f range(100)",
    )
    @argument("--chunksize", type=int, default=1, metavar="N", help="N items per task (default 1)")
    @argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="return the futures at once instead of waiting for the results",
    )
    @task_options
    def _map(self, rest: str, cell: str | None, ns: Namespace) -> Any:
        """One task per item (or per chunk), a progress bar, the list of results."""
        args = parse_with_expression(self._map, rest)
        if args.chunksize < 1:
            raise UsageError("--chunksize must be at least 1")
        func_source, items_source = split_function_and_iterable(args.expr)
        fn = _evaluate(_expression(func_source, "the function"), ns)
        if not callable(fn):
            raise UsageError(f"{func_source!r} is a {type(fn).__name__}, not a function")
        iterable = _evaluate(_expression(items_source, "the iterable"), ns)
        try:
            items = list(iterable)
        except TypeError:
            raise UsageError(f"{items_source!r} is a {type(iterable).__name__}, not an iterable") from None
        batch = MapView(self._view(args), items, args.chunksize)
        label = f"{getattr(fn, '__qualname__', 'map')} over {len(items)} items"
        # with --async only a widget follows the batch: a text line would scribble over the prompt
        follow = items and (show.in_kernel() or not args.asynchronous)
        user = args.user or self.client.user
        live = self._progress(batch.counter, label, user) if follow else None
        try:
            with self._balancer():
                batch.map_futures(fn, batch.items, chunksize=args.chunksize)
            if args.asynchronous:
                batch.wait_queued()
            else:
                batch.counter.wait(None)
        except BaseException:
            self._cancel_quietly(batch.stop())
            raise
        finally:
            if live is not None and not args.asynchronous:
                live.stop()
        futures = batch.futures
        self._remember(futures)
        self._store(args.out, futures)
        if args.asynchronous:
            return futures
        show.print_outputs(futures)
        for fut in futures if batch.counter.failed or batch.counter.cancelled else ():
            if fut.cancelled():
                raise UsageError(f"task {fut.task_id} of the map was cancelled")
            if (exc := fut.exception()) is not None:
                raise with_remote_traceback(exc, fut)
        results = [fut.result() for fut in futures]
        return [x for chunk in results for x in chunk] if args.chunksize > 1 else results

    def _cancel_quietly(self, pending: list[str]) -> None:
        if pending:
            with contextlib.suppress(PlbError):
                self.client.cancel(pending)
            print(f"cancelled {len(pending)} unfinished task(s) of the map")

    @magic_arguments(name="plb status")
    def _status(self, rest: str, cell: str | None, ns: Namespace) -> Any:
        """The balancer's state: health, totals, users, hubs, recent failures."""
        self._status.parser.parse_argstring(rest)
        with self._balancer():
            return show.status_report(self.client.status())

    @magic_arguments(name="plb hubs")
    def _hubs(self, rest: str, cell: str | None, ns: Namespace) -> Any:
        """Hubs and workers: busy/idle, priority range, current task."""
        self._hubs.parser.parse_argstring(rest)
        with self._balancer():
            return show.hubs_report(self.client.hubs())

    @magic_arguments(name="plb result")
    @argument("id", nargs="?", help="task id or a variable holding a future (default: the last task)")
    @wait_options
    def _result(self, rest: str, cell: str | None, ns: Namespace) -> Any:
        """Wait for one task, print what it printed, return its result (or show its error)."""
        args = self._result.parser.parse_argstring(rest)
        if args.id is None:
            if not self._futures:
                raise UsageError("no task submitted yet; give a task id: %plb result ID")
            futures = [next(reversed(self._futures.values()))]
        else:
            futures = self._lookup(args.id, ns) or []
        if not futures:
            return self._foreign_result(args.id)
        if len(futures) > 1:
            raise UsageError(f"{args.id} holds {len(futures)} futures; wait for them with %plb wait {args.id}")
        fut = futures[0]
        done, _ = concurrent.futures.wait([fut], args.timeout)
        if not done:
            raise UsageError(f"task {fut.task_id} is still {fut.state} after {args.timeout:g} s")
        show.print_output(fut)
        if fut.cancelled():
            raise UsageError(f"task {fut.task_id} was cancelled")
        if fut.exception() is not None:
            raise with_remote_traceback(fut.exception(), fut)
        return fut.result()

    def _foreign_result(self, task_id: str) -> Any:
        """A task another client submitted: its result if the balancer still holds it."""
        with self._balancer():
            info = self.client.getTask(task_id)
        state = info.get("state")
        if state is None and info.get("error"):  # e.g. another user's task in a team pool
            raise UsageError(str(info["error"]))
        if state is None:
            raise UsageError(f"unknown task {task_id!r}: not submitted from here and unknown to the balancer")
        for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            if info.get(stream):
                out.write(info[stream])
        if state == "done":
            return info["result"]
        if state in ("failed", "cancelled"):
            raise UsageError(f"task {task_id} {state}: {info.get('error', '')}")
        raise UsageError(f"task {task_id} is {state}; only tasks submitted from this notebook can be waited for")

    @magic_arguments(name="plb wait")
    @argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="task ids or variables holding futures; 'all' (default)",
    )
    @wait_options
    def _wait_cmd(self, rest: str, cell: str | None, ns: Namespace) -> None:
        """Wait for tasks, print what they printed, list the failures."""
        args = self._wait_cmd.parser.parse_argstring(rest)
        futures = self._select(args.ids, ns)
        if not futures:
            print("no unfinished task to wait for")
            return
        self._wait(futures, args.timeout, f"waiting for {len(futures)} tasks")

    def _select(self, tokens: list[str], ns: Namespace) -> list[Any]:
        if not tokens or tokens == ["all"]:
            outstanding = self._client.outstanding() if self._client else []
            chosen = {f.task_id: f for f in [*self._futures.values(), *outstanding] if not f.done()}
            return list(chosen.values())
        futures = []
        for token in tokens:
            found = self._lookup(token, ns)
            if found is None:
                raise UsageError(
                    f"unknown task {token!r}: use a task id submitted from this notebook, "
                    "a variable holding futures, or 'all'"
                )
            futures.extend(found)
        return futures

    @magic_arguments(name="plb cancel")
    @argument("ids", nargs="+", metavar="ID", help="task ids, variables holding futures, or 'all'")
    def _cancel(self, rest: str, cell: str | None, ns: Namespace) -> None:
        """Cancel tasks: queued ones leave the queue, running ones have their worker replaced."""
        args = self._cancel.parser.parse_argstring(rest)
        if args.ids == ["all"]:
            futures = self._select([], ns)
            ids = [f.task_id for f in futures]
        else:
            futures, ids = [], []
            for token in args.ids:  # unknown tokens go as ids: the balancer may know them
                found = self._lookup(token, ns) or []
                futures.extend(found)
                ids.extend([f.task_id for f in found] or [token])
        if not ids:
            print("no unfinished task to cancel")
            return
        with self._balancer():
            replies = self.client.cancel(ids)
        # the balancer's "cancelled" results follow its reply: let the futures catch up
        concurrent.futures.wait([f for f in futures if replies.get(f.task_id, {}).get("cancelled")], 5)
        cancelled = sum(bool(r.get("cancelled")) for r in replies.values())
        unknown = [i for i, r in replies.items() if r.get("state") is None and not r.get("cancelled")]
        finished = len(replies) - cancelled - len(unknown)
        line = f"cancelled {cancelled} of {len(ids)} task(s)"
        if finished:
            line += f"; {finished} had already finished"
        if unknown:
            line += f"; unknown: {', '.join(unknown[:5])}" + (" …" if len(unknown) > 5 else "")
        print(line)

    @magic_arguments(name="plb dashboard")
    @argument("--refresh", type=positive, default=1.0, metavar="SECONDS", help="seconds between refreshes")
    @argument(
        "-o",
        "--out",
        type=identifier,
        metavar="NAME",
        help="also store the Dashboard in notebook variable NAME",
    )
    def _dashboard(self, rest: str, cell: str | None, ns: Namespace) -> None:
        """A live panel: per-user queues, hubs and workers, throughput, failures, cancel buttons."""
        args = self._dashboard.parser.parse_argstring(rest)
        if not show.in_kernel():
            raise UsageError("%plb dashboard needs a Jupyter kernel (ipywidgets); here use %plb status")
        from jupyter_plb.jupyter.widgets import Dashboard

        dashboard = Dashboard(self.client, refresh=args.refresh)
        self._dashboards.append(dashboard)
        self._store(args.out, dashboard)
        display(dashboard)

    @magic_arguments(name="plb connect")
    @argument("file", nargs="?", help="the balancer's plb-connection.json (default: $PLB_CONNECTION_FILE)")
    def _connect(self, rest: str, cell: str | None, ns: Namespace) -> None:
        """Connect (again) to a balancer, now."""
        args = self._connect.parser.parse_argstring(rest)
        if self._client is not None:
            self._client.close()
            self._client = None
        self.connection_file = Path(args.file).expanduser() if args.file else None
        info = self.client.connection_info
        print(f"connected to balancer {info.balancer_id or '?'} at {info.client_url}")

    @magic_arguments(name="plb help")
    @argument("subcommand", nargs="?", help="the subcommand to explain")
    def _help(self, rest: str, cell: str | None, ns: Namespace) -> None:
        """Explain %plb or one of its subcommands."""
        args = self._help.parser.parse_argstring(rest)
        if args.subcommand is None:
            print(PlbMagics.plb.__doc__)
            return
        handler = SUBCOMMANDS.get(args.subcommand)
        if handler is None:
            raise UsageError(f"unknown subcommand {args.subcommand!r}; one of: {', '.join(SUBCOMMANDS)}")
        print(handler.parser.format_help())

    # -- the entry point ---------------------------------------------------------------------------
    @needs_local_scope
    @no_var_expand
    @line_cell_magic
    def plb(self, line: str, cell: str | None = None, local_ns: Namespace | None = None) -> Any:
        """Run Python tasks on the jupyter_plb balancer's workers."""
        name, rest = [*line.split(None, 1), "", ""][:2]
        if not name:
            print(PlbMagics.plb.__doc__)
            return None
        handler = SUBCOMMANDS.get(name)
        if handler is None:
            raise UsageError(f"unknown subcommand {name!r}; use one of: {', '.join(SUBCOMMANDS)} (see %plb?)")
        if cell is not None and name != "submit":
            raise UsageError(f"%%plb {name} does not take a cell; only %%plb submit does")
        user_ns = self.shell.user_ns
        ns = user_ns if local_ns is None or local_ns is user_ns else {**user_ns, **local_ns}
        try:
            return handler(self, rest.strip(), cell, ns)
        except UsageError as exc:
            message = str(exc)
            if message.startswith("%"):
                raise
            raise UsageError(f"%plb {name}: {message}") from None


SUBCOMMANDS: dict[str, Any] = {
    "submit": PlbMagics._submit,
    "map": PlbMagics._map,
    "status": PlbMagics._status,
    "hubs": PlbMagics._hubs,
    "result": PlbMagics._result,
    "wait": PlbMagics._wait_cmd,
    "cancel": PlbMagics._cancel,
    "dashboard": PlbMagics._dashboard,
    "connect": PlbMagics._connect,
    "help": PlbMagics._help,
}


def _overview() -> str:
    usages = "\n".join("  " + " ".join(handler.parser.format_usage().split()[1:]) for handler in SUBCOMMANDS.values())
    return f"""Run Python tasks on the jupyter_plb balancer's workers.

Subcommands:
{usages}

  %%plb submit [options]   run the cell's code on a worker (notebook names it reads go with it)

The client connects on first use through $PLB_CONNECTION_FILE (or %plb connect FILE).
Task options: -p/--priority P, -u/--user NAME, --timeout SECONDS, --retries N, -o NAME.
Details: %plb help SUBCOMMAND. Examples:
  fut = %plb submit f(x, y=1)
  results = %plb map f range(100) --chunksize 10
  %plb wait all
"""


PlbMagics.plb.__doc__ = _overview()


def register(ipython: Any) -> PlbMagics:
    """Register ``%plb``/``%%plb``; in a kernel, futures also display as live widgets."""
    magics = PlbMagics(ipython)
    ipython.register_magics(magics)
    if getattr(ipython, "kernel", None) is not None:
        from jupyter_plb.jupyter.widgets import show_future

        ipython.display_formatter.ipython_display_formatter.for_type_by_name(*FUTURE_TYPE, show_future)
    return magics


def unregister(ipython: Any) -> None:
    """Remove the magics and the display hook; cancel pending tasks and disconnect."""
    manager = ipython.magics_manager
    magics = manager.registry.pop(PlbMagics.__name__, None)
    if magics is not None:
        magics.close()
    for kind in ("line", "cell"):
        manager.magics[kind].pop("plb", None)
    ipython.display_formatter.ipython_display_formatter.pop(".".join(FUTURE_TYPE), None)
