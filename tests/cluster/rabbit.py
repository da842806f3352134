"""A RabbitMQ cluster of our own, started from the installed package, for the fault suite.

Each node gets its own name (``<prefix>N@localhost``), AMQP and distribution ports, data and log
directories, pid file, enabled-plugins file, ``HOME`` (holding the cluster's own Erlang cookie)
and env file — so the machine's own ``rabbit@`` node and its cookie are never touched. Nodes run
in a process group of their own: a kill or a freeze reaches the whole node, and :meth:`close`
kills every group it started, whatever happened before.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SBIN = next(iter(sorted(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/sbin"))), None)
"""The server scripts of the installed package (the /usr/sbin wrappers switch user and use the
system node's cookie)."""

LOCAL_ERL = "-kernel inet_dist_use_interface {127,0,0,1}"

NET_TICKTIME = int(os.environ.get("DIHYA_CLUSTER_NET_TICKTIME", "10"))
"""Seconds after which a silent peer node is declared down (Erlang's ``net_ticktime``;
RabbitMQ's default is 60). A frozen node keeps its distribution connections open, and until
it is declared down every write to RabbitMQ's metadata store (a quorum queue's new leader, a
consumer's registration) waits for it: see docs/operations.md, "Running on a cluster"."""

DLX_CONFIRM_MS = 5000
"""Milliseconds after which RabbitMQ's dead-letter worker resends a message not confirmed
(``dead_letter_worker_publisher_confirm_timeout``; 180,000 by default): what the production
manifests set too (deploy/k8s/production/rabbitmq.yaml)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(eq=False)  # a node is itself: hashed by identity
class Node:
    index: int
    name: str
    port: int
    dist_port: int
    base: Path
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"


@dataclass
class Cluster:
    """``size`` RabbitMQ nodes under ``workdir``, clustered with the first one."""

    workdir: Path
    size: int = 3
    prefix: str = field(default_factory=lambda: f"dihya{secrets.token_hex(3)}rb")
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        if SBIN is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.cookie = secrets.token_hex(16).upper()
        ctl_port = free_port()
        self._ctl_ports = (ctl_port, ctl_port)
        for i in range(1, self.size + 1):
            base = self.workdir / f"rb{i}"
            node = Node(i, f"{self.prefix}{i}@localhost", free_port(), free_port(), base)
            home = base / "home"
            home.mkdir(parents=True, exist_ok=True)
            cookie = home / ".erlang.cookie"
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
            (base / "enabled_plugins").write_text("[].\n")
            (base / "rabbitmq-env.conf").write_text("# the cluster test's own: empty\n")
            (base / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.port}\n"
                "cluster_partition_handling = pause_minority\n"
                f"net_ticktime = {NET_TICKTIME}\n"
                "loopback_users = none\n"
            )
            # RabbitMQ's own at-least-once dead-lettering (a retry's way back from its wait
            # queue) resends an unconfirmed message after this long: 180 s by default, and a
            # killed node's nacks can catch it (docs/operations.md, "Running on a cluster").
            # The name changed in 4.x (``_ms``); an unknown key is ignored.
            keys = ("dead_letter_worker_publisher_confirm_timeout",
                    "dead_letter_worker_publisher_confirm_timeout_ms")
            terms = ", ".join(f"{{{key}, {DLX_CONFIRM_MS}}}" for key in keys)
            (base / "advanced.config").write_text(f"[{{rabbit, [{terms}]}}].\n")
            self.nodes.append(node)

    # -- environment and commands --------------------------------------------------------

    def env(self, node: Node) -> dict[str, str]:
        base = node.base
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(base / "home"),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self._ctl_ports[0]),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self._ctl_ports[1] + 10),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": LOCAL_ERL,
            "RABBITMQ_CTL_ERL_ARGS": LOCAL_ERL,
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def ctl(self, node: Node, *args: str, tool: str = "rabbitmqctl", timeout: float = 60,
            check: bool = True) -> str:
        """Run a CLI tool against ``node``; its stdout."""
        assert SBIN is not None
        done = subprocess.run([str(SBIN / tool), "-q", "-n", node.name, *args],
                              env=self.env(node), capture_output=True, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} on {node.name}: "
                               f"{done.stdout.decode()[-800:]} {done.stderr.decode()[-800:]}")
        return done.stdout.decode()

    # -- node life -----------------------------------------------------------------------

    def spawn(self, node: Node) -> None:
        assert SBIN is not None
        (node.base / "log").mkdir(exist_ok=True)
        out = (node.base / "server.out").open("ab")
        node.proc = subprocess.Popen([str(SBIN / "rabbitmq-server")], env=self.env(node),
                                     stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        node.frozen = False

    def wait_up(self, node: Node, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not port_open(node.port):
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited: "
                                   + (node.base / "server.out").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} did not listen within {timeout}s")
            time.sleep(0.2)
        self.ctl(node, "await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)

    def start(self) -> None:
        """Start every node, then join the others to the first (as an operator would)."""
        for node in self.nodes:
            self.spawn(node)
        for node in self.nodes:
            self.wait_up(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        for node in self.nodes:
            self.ctl(node, "await_startup")

    def kill(self, node: Node) -> None:
        """kill -9 the node (its whole process group)."""
        if node.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(30)
            node.proc = None

    def freeze(self, node: Node) -> None:
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGSTOP)
        node.frozen = True

    def thaw(self, node: Node) -> None:
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGCONT)
        node.frozen = False

    def restart(self, node: Node) -> None:
        """Start a killed or stopped node again and wait until it runs (it rejoins by itself)."""
        self.spawn(node)
        self.wait_up(node)

    def stop(self, node: Node) -> None:
        """A clean stop (``rabbitmqctl stop``), as a rolling restart does."""
        if node.proc is None:
            return
        self.ctl(node, "stop", check=False, timeout=120)
        try:
            node.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill(node)
        node.proc = None

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and not n.frozen]

    def node_named(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def by_port(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    # -- what the cluster says ------------------------------------------------------------

    def leaders(self, vhost: str) -> dict[str, str]:
        """Queue name → node name of its leader, for the quorum queues of ``vhost``."""
        node = self.running()[0]
        out = self.ctl(node, "list_queues", "-p", vhost, "name", "leader", "type",
                       "--no-table-headers")
        leaders: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "quorum":
                leaders[parts[0]] = parts[1]
        return leaders

    def messages(self, vhost: str) -> dict[str, int]:
        """Queue name → messages it holds (ready and unacked)."""
        node = self.running()[0]
        out = self.ctl(node, "list_queues", "-p", vhost, "name", "messages",
                       "--no-table-headers")
        found: dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                found[parts[0]] = int(parts[1])
        return found

    def close(self) -> None:
        """Kill every node we started (thawed first) and remove the data directories."""
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGCONT)
                self.kill(node)
        kept = os.environ.get("DIHYA_CLUSTER_KEEP_LOGS")
        for node in self.nodes:  # forget the names in the shared epmd: nothing else to do
            if kept and (node.base / "log").is_dir():
                shutil.copytree(node.base / "log",
                                self.workdir.parent / f"rabbit-logs-rb{node.index}",
                                dirs_exist_ok=True)
            shutil.rmtree(node.base, ignore_errors=True)
