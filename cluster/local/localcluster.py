"""A Ray cluster on this machine that looks like a real one: a head and N worker nodes, each its own
raylet and object store on its own ports, plus an S3 endpoint (moto's server) with one bucket.

`up` prints the shell exports (stdout) and records every process it started in a state folder;
`down`, `kill NODE` and `start NODE` act on exactly those processes, never on another Ray of this
machine (`ray stop` would end them all). Called by up.sh, down.sh and node.sh beside this file.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

PYTHON_BIN = Path(sys.executable).parent
RAY = str(PYTHON_BIN / "ray")
HOST = "127.0.0.1"
# moto accepts any credentials; these are the ones its documentation uses.
S3_KEY, S3_SECRET, S3_REGION = "testing", "testing", "us-east-1"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def settings() -> dict:
    """What up reads from the environment; the defaults keep clear of Ray's (6379, 8265, 10001)."""
    state_dir = os.environ.get("MLC_DIST_CLUSTER_DIR", "/tmp/mlc-dist-cluster")
    return {
        "state_dir": os.path.abspath(state_dir),
        "bucket": os.environ.get("MLC_DIST_BUCKET", "mlc-dist"),
        "gcs_port": _env_int("MLC_DIST_RAY_PORT", 6390),
        "dashboard_port": _env_int("MLC_DIST_DASHBOARD_PORT", 8275),
        "client_port": _env_int("MLC_DIST_RAY_CLIENT_PORT", 10011),
        "s3_port": _env_int("MLC_DIST_S3_PORT", 9010),
        # Node i (0 = head) takes the 10 ports from base + 10 * i (6 are used).
        "node_port_base": _env_int("MLC_DIST_NODE_PORT_BASE", 26400),
        "num_worker_nodes": _env_int("MLC_DIST_NUM_WORKER_NODES", 2),
        # 0, as KubeRay advises: the head keeps the GCS, the dashboard and the drivers; training
        # workers, Ray Data tasks and scoring actors all run on the worker nodes.
        "head_cpus": _env_int("MLC_DIST_HEAD_CPUS", 0),
        "worker_cpus": _env_int("MLC_DIST_WORKER_CPUS", 2),
        "object_store_mb": _env_int("MLC_DIST_OBJECT_STORE_MB", 400),
    }


def log(message: str) -> None:
    print(f"[local-cluster] {message}", file=sys.stderr, flush=True)


def node_ports(cfg: dict, index: int) -> dict:
    base = cfg["node_port_base"] + 10 * index
    names = ("node_manager", "object_manager", "dashboard_agent_listen", "dashboard_agent_grpc",
             "metrics_export", "runtime_env_agent")
    return {name: base + k for k, name in enumerate(names)}


def exports(state: dict) -> dict:
    """What a client shell needs: the cluster, its Jobs API, the token and the object store."""
    return {
        "RAY_ADDRESS": state["gcs_address"],
        "RAY_API_SERVER_ADDRESS": f"http://{HOST}:{state['dashboard_port']}",
        # A client with an explicit address only sends the token in token mode (Ray 2.60).
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state["token_path"],
        "AWS_ENDPOINT_URL": f"http://{HOST}:{state['s3_port']}",
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_REGION": S3_REGION,
        "MLC_DIST_BUCKET": state["bucket"],
        "MLC_DIST_CLUSTER_DIR": state["state_dir"],
    }


def node_env(state: dict) -> dict:
    """The environment every node runs in: as on a real cluster, credentials come with the node."""
    # RAY_ADDRESS too: Ray processes that look for "their" cluster (address "auto", as Ray
    # Train's placement-group cleaner does) found several on this shared host and gave up.
    env = {**os.environ, **exports(state)}
    # Job entrypoints run `python` from the head's PATH: this interpreter, as in an image.
    env["PATH"] = f"{PYTHON_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# --- processes -----------------------------------------------------------------------------
# Each node's `ray start` (and moto) begins a session of its own; Ray keeps its processes in it
# (workers move to their own process groups, not sessions), so a node is its session id. Its
# processes renamed themselves (ray::IDLE, ray::DashboardAgent): command lines cannot find them.

def _session(sid: int, since: float) -> list[psutil.Process]:
    procs = []
    for p in psutil.process_iter():
        try:
            # Started no earlier than the node: a recycled session id is someone else's.
            if os.getsid(p.pid) == sid and p.create_time() >= since - 1:
                procs.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return _with_children(procs)


def _with_children(procs) -> list[psutil.Process]:
    everything = {p.pid: p for p in procs}
    for p in procs:
        try:
            everything.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    return list(everything.values())


def _end(procs, sig=signal.SIGTERM, wait_s: float = 10) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            continue
    _, left = psutil.wait_procs(procs, timeout=wait_s)
    if left and sig != signal.SIGKILL:
        log(f"still running after {wait_s:.0f} s, killed: {sorted(_name(p) for p in left)}")
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=5)


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return str(p.pid)


def _spawn(args, env, log_path: Path) -> tuple[subprocess.Popen, dict]:
    started_at = time.time()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, {"sid": proc.pid, "started_at": started_at}


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")
            time.sleep(0.2)


# --- state ---------------------------------------------------------------------------------

def _state_path(state_dir: str) -> Path:
    return Path(state_dir) / "state.json"


def load_state(state_dir: str) -> dict:
    path = _state_path(state_dir)
    if not path.exists():
        raise SystemExit(f"no local cluster recorded in {state_dir} (run cluster/local/up.sh)")
    return json.loads(path.read_text())


def save_state(state: dict) -> None:
    tmp = _state_path(state["state_dir"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_path(state["state_dir"]))


# --- the parts -----------------------------------------------------------------------------

def start_object_store(state: dict) -> None:
    proc, state["s3"] = _spawn([str(PYTHON_BIN / "moto_server"), "-H", HOST,
                                "-p", str(state["s3_port"])],
                               os.environ, Path(state["state_dir"]) / "moto.log")
    save_state(state)
    _wait_port(state["s3_port"])
    import boto3  # comes with moto

    env = exports(state)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=S3_KEY,
                 aws_secret_access_key=S3_SECRET, region_name=S3_REGION
                 ).create_bucket(Bucket=state["bucket"])
    log(f"S3 endpoint {env['AWS_ENDPOINT_URL']} (moto, pid {proc.pid}), bucket {state['bucket']}")


def _node_args(state: dict, name: str) -> list[str]:
    node = state["nodes"][name]
    ports = node["ports"]
    # A temp dir per node, as on separate machines: a node's log monitor forwards what is in its
    # own session folder, and one shared folder printed every worker line once per node.
    args = [f"--node-ip-address={HOST}", f"--temp-dir={os.path.join(state['temp_dir'], name)}",
            f"--num-cpus={node['num_cpus']}", "--num-gpus=0",
            f"--object-store-memory={state['object_store_mb'] * 1024 * 1024}",
            # Tests target a node by its resource or label; the name shows in `ray status`.
            f"--resources={json.dumps({name: 1})}", f"--labels=mlc-dist/node={name}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--metrics-export-port={ports['metrics_export']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            # 0: each worker process binds a free port (fixed ranges would clash on a shared box).
            "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats"]
    if name == "head":
        args += ["--head", f"--port={state['gcs_port']}", f"--dashboard-host={HOST}",
                 f"--dashboard-port={state['dashboard_port']}",
                 f"--ray-client-server-port={state['client_port']}"]
    else:
        args += [f"--address={state['gcs_address']}"]
    return args


def start_node(state: dict, name: str) -> None:
    node = state["nodes"][name]
    log_path = Path(state["state_dir"]) / f"ray-start-{name}.log"
    proc, node["session"] = _spawn([RAY, "start", *_node_args(state, name)], node_env(state),
                                   log_path)
    node.pop("node_id", None)
    save_state(state)  # recorded before it can fail, so down finds whatever did start
    if proc.wait(timeout=180) != 0:
        raise RuntimeError(f"ray start ({name}) failed:\n{log_path.read_text()[-3000:]}")
    raylet = [p for p in node_processes(state, name) if p.name() == "raylet"]
    assert len(raylet) == 1, f"{name}: expected one raylet, found {len(raylet)}"
    node["raylet_pid"] = raylet[0].pid
    node["node_id"] = next(a.split("=", 1)[1] for a in raylet[0].cmdline()
                           if a.startswith("--node_id="))
    save_state(state)
    ports = sorted(node["ports"].values())
    log(f"{name}: node {node['node_id'][:12]}..., raylet pid {raylet[0].pid}, "
        f"{node['num_cpus']} CPU, ports {ports[0]}-{ports[-1]}")


def node_processes(state: dict, name: str) -> list[psutil.Process]:
    """Everything of the node: raylet (with its object store), agents, log monitor, workers;
    on the head also the GCS, dashboard, autoscaler monitor and Ray client server."""
    session = state["nodes"][name].get("session")
    return _session(session["sid"], session["started_at"]) if session else []


def wait_for_nodes(state: dict, timeout: float = 120) -> None:
    """Until the GCS reports every recorded node alive, through the state API (token included)."""
    os.environ.update({k: v for k, v in exports(state).items() if k.startswith("RAY_AUTH")})
    from ray.util.state import list_nodes

    want = {n["node_id"] for n in state["nodes"].values() if n.get("node_id")}
    deadline = time.monotonic() + timeout
    address = exports(state)["RAY_API_SERVER_ADDRESS"]
    while True:
        try:
            alive = {n.node_id for n in list_nodes(address=address,
                                                   filters=[("state", "=", "ALIVE")])}
            if want <= alive:
                return
        except Exception:  # noqa: BLE001 - the dashboard comes up after `ray start` returns
            alive = set()
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes not alive after {timeout:.0f} s: {sorted(want - alive)}")
        time.sleep(1)


# --- commands ------------------------------------------------------------------------------

def _check_ports_free(cfg: dict) -> None:
    """Fail before starting anything: a busy S3 port would otherwise be someone else's server."""
    wanted = {"MLC_DIST_RAY_PORT": cfg["gcs_port"],
              "MLC_DIST_DASHBOARD_PORT": cfg["dashboard_port"],
              "MLC_DIST_RAY_CLIENT_PORT": cfg["client_port"], "MLC_DIST_S3_PORT": cfg["s3_port"]}
    for i in range(cfg["num_worker_nodes"] + 1):
        for port in node_ports(cfg, i).values():
            wanted[f"MLC_DIST_NODE_PORT_BASE (+{port - cfg['node_port_base']})"] = port
    for setting, port in wanted.items():
        with socket.socket() as s:
            # As the servers themselves bind: a port a cluster just released (TIME_WAIT) is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))  # Ray's gRPC servers listen on every interface
            except OSError:
                raise SystemExit(f"port {port} is in use: set {setting} to a free one") from None


def up() -> None:
    cfg = settings()
    state_dir = cfg["state_dir"]
    if _state_path(state_dir).exists():
        raise SystemExit(f"a local cluster is already recorded in {state_dir}: "
                         "run cluster/local/down.sh first")
    if not (PYTHON_BIN / "moto_server").exists():
        raise SystemExit("moto_server not found: pip install -e '.[dev]' (moto[server])")
    _check_ports_free(cfg)
    os.makedirs(state_dir, exist_ok=True)
    token_path = os.path.join(state_dir, "auth_token")
    # This cluster's own token, so that ~/.ray/auth_token (another cluster's) is left alone.
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    names = ["head"] + [f"worker{i}" for i in range(1, cfg["num_worker_nodes"] + 1)]
    state = {**cfg, "temp_dir": os.path.join(state_dir, "ray"), "token_path": token_path,
             "gcs_address": f"{HOST}:{cfg['gcs_port']}",
             "nodes": {name: {"ports": node_ports(cfg, i),
                              "num_cpus": cfg["head_cpus"] if i == 0 else cfg["worker_cpus"]}
                       for i, name in enumerate(names)}}
    save_state(state)
    try:
        start_object_store(state)
        for name in names:
            start_node(state, name)
        wait_for_nodes(state)
    except BaseException:
        log("start failed: stopping what was started")
        down(state_dir=state_dir, keep_logs=True)
        raise
    log(f"up: {len(names)} nodes alive; down with cluster/local/down.sh "
        f"(MLC_DIST_CLUSTER_DIR={state_dir})")
    print_exports(state)


def print_exports(state: dict | None = None) -> None:
    state = state or load_state(settings()["state_dir"])
    for key, value in exports(state).items():
        print(f"export {key}={shlex.quote(value)}")


def down(state_dir: str | None = None, keep_logs: bool = False) -> None:
    state_dir = state_dir or settings()["state_dir"]
    if not _state_path(state_dir).exists():
        log(f"nothing recorded in {state_dir}")
        return
    state = json.loads(_state_path(state_dir).read_text())
    procs = _session(state["s3"]["sid"], state["s3"]["started_at"]) if "s3" in state else []
    for name in state["nodes"]:
        procs += node_processes(state, name)
    # In `ray stop`'s order: raylets unregister from a GCS that is still there (each hung for
    # the whole grace period when all went at once), then the rest, the GCS last.
    order = {"raylet": 0, "gcs_server": 2}
    for step in range(3):
        _end([p for p in procs if order.get(_name(p), 1) == step])
    log(f"stopped {len(procs)} processes")
    if keep_logs:
        _state_path(state_dir).unlink()
    else:
        shutil.rmtree(state_dir, ignore_errors=True)


def kill_node(name: str) -> None:
    state = load_state(settings()["state_dir"])
    if name == "head" or name not in state["nodes"]:
        raise SystemExit(f"kill: expected a worker node ({', '.join(list(state['nodes'])[1:])})")
    procs = node_processes(state, name)
    # SIGKILL, all at once: a lost machine says goodbye to no one.
    _end(procs, sig=signal.SIGKILL, wait_s=5)
    log(f"{name}: killed {len(procs)} processes (node {state['nodes'][name].get('node_id')})")


def restart_node(name: str) -> None:
    state = load_state(settings()["state_dir"])
    if name == "head" or name not in state["nodes"]:
        raise SystemExit(f"start: expected a worker node ({', '.join(list(state['nodes'])[1:])})")
    if any(p.name() == "raylet" for p in node_processes(state, name)):
        raise SystemExit(f"start: {name} is running; kill it first")
    start_node(state, name)
    wait_for_nodes({**state, "nodes": {name: state["nodes"][name]}})
    print(state["nodes"][name]["node_id"])


def main(argv: list[str]) -> None:
    usage = "usage: localcluster.py up | down | env | kill NODE | start NODE"
    if not argv:
        raise SystemExit(usage)
    command, rest = argv[0], argv[1:]
    if command == "up" and not rest:
        up()
    elif command == "down" and not rest:
        down()
    elif command == "env" and not rest:
        print_exports()
    elif command == "kill" and len(rest) == 1:
        kill_node(rest[0])
    elif command == "start" and len(rest) == 1:
        restart_node(rest[0])
    else:
        raise SystemExit(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
