"""Driving a server with `wrk` (a Lua script rotating over prepared bodies, printing its own p50/p99)
and what one run costs: the event-loop and server CPU per request from /proc/<pid>/task/<tid>/stat,
how busy the machine was (/proc/stat) and the load generator's own CPU."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks._load.servers import Server

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int, tid: int) -> float:
    """utime + stime of one thread, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


LUA = """
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  local headers = {["Content-Type"] = "application/json"}
  return wrk.format("POST", "/v1/embeddings", headers, bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nRESULT {"requests":%%d,"duration_us":%%d,"errors":%%d,"status_errors":%%d,'
    .. '"p50_us":%%d,"p99_us":%%d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def lua_script(bodies: list[str], path: Path) -> Path:
    quoted = ",\n".join(f"[==[{b}]==]" for b in bodies)
    path.write_text(LUA % quoted)
    return path


@dataclass
class Run:
    name: str
    connections: int
    per_request: int
    modality: str
    req_s: float
    emb_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    loop_ms_per_req: float  # main thread(s) CPU per request
    server_ms_per_req: float  # all server threads
    machine_busy: float  # 0..1
    client_cpu: float  # the load generator's CPU, in cores
    efficiency: float = float("nan")
    loop_vs_floor: float = float("nan")


def drive(
    server: Server, script: Path, connections: int, seconds: float, per_request: int, modality: str
) -> Run:
    base = [
        "wrk",
        "-t1",
        f"-c{connections}",
        "--timeout",
        "30s",
        "-s",
        str(script),
        f"http://127.0.0.1:{server.port}",
    ]
    subprocess.run([*base[:-1], "-d1s", base[-1]], capture_output=True, check=True)  # warm-up
    pids = server.pids()
    loop0 = sum(thread_cpu_s(p, p) for p in pids)
    cpu0 = sum(process_cpu_s(p) for p in pids)
    busy0, total0 = machine_ticks()
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [*base[:-1], f"-d{seconds:g}s", base[-1]], capture_output=True, text=True, check=True
    )
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = machine_ticks()
    loop1 = sum(thread_cpu_s(p, p) for p in pids)
    cpu1 = sum(process_cpu_s(p) for p in pids)
    match = re.search(r"RESULT (\{.*\})", out.stdout)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    r = json.loads(match.group(1))
    duration = r["duration_us"] / 1e6
    n = max(1, r["requests"])
    client = (child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime) / duration
    return Run(
        server.name,
        connections,
        per_request,
        modality,
        r["requests"] / duration,
        r["requests"] * per_request / duration,
        r["p50_us"] / 1000,
        r["p99_us"] / 1000,
        r["errors"] + r["status_errors"],
        (loop1 - loop0) * 1000 / n,
        (cpu1 - cpu0) * 1000 / n,
        (busy1 - busy0) / max(1, total1 - total0),
        client,
    )


def show(run: Run) -> None:
    print(
        f"  {run.name:<18} {run.modality:>5}x{run.per_request:<2} {run.connections:>3} conn  "
        f"{run.req_s:7.0f} req/s {run.emb_s:7.0f} emb/s  p50 {run.p50_ms:6.2f}  p99 {run.p99_ms:6.2f} ms  "
        f"eff {run.efficiency:4.2f}  loop {run.loop_ms_per_req:.3f} ms/req ({run.loop_vs_floor:.2f}x floor)  "
        f"server {run.server_ms_per_req:.3f} ms/req  busy {run.machine_busy * 100:3.0f}%  "
        f"wrk {run.client_cpu * 100:3.0f}% of a core  errors {run.errors}",
        flush=True,
    )
