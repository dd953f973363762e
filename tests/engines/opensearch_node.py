"""Build and run a real single OpenSearch node in a JVM, from Maven Central jars only.

The Java side lives in ``opensearch-node/`` (a Maven ``pom.xml`` and one launcher class); see its
README. This module finds a suitable JDK, builds the launcher with Maven when its outputs are
missing or stale, starts the node on 127.0.0.1 with a temporary home, and makes sure nothing is
left running afterwards::

    with run("2.19.6") as url:  # "http://127.0.0.1:<port>", cluster health green
        ...

``NodeUnavailable`` means this machine cannot build or run a version (no JDK, no Maven, Maven
Central unreachable on the first build): callers turn it into a skip. ``NodeStartError`` means
the node was built but did not start: a real failure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PROJECT_DIR = Path(__file__).resolve().parent / "opensearch-node"
READY_PREFIX = "OPENSEARCH_NODE_READY "
MAIN_CLASS = "spladees.testnode.OpenSearchTestNode"
# Seconds one Maven build may take; the first one downloads ~90 MB per version.
BUILD_TIMEOUT = 900


@dataclass(frozen=True)
class NodeVersion:
    """One OpenSearch version the launcher can build, and what it needs and offers."""

    version: str
    profile: str  # Maven profile of opensearch-node/pom.xml
    min_java: int
    max_java: int | None  # newest JDK major known to run it; None: no known limit
    # neural-search (neural_sparse, hybrid, normalization/score-ranker processors) is loaded
    # only where its plugin zip is on Maven Central.
    neural_search: bool
    # ml-commons (connectors, remote models, the /_plugins/_ml API) with job-scheduler: likewise
    # only where opensearch-ml-plugin's zip is on Maven Central (2.19.6.0; no 3.x at all).
    ml_commons: bool


VERSIONS: dict[str, NodeVersion] = {
    v.version: v
    for v in (
        # OpenSearch 2.19 supports JDK 11, 17 and 21 (it bundles 23); 17 is what we test on.
        NodeVersion(
            "2.19.6",
            "opensearch-2.19",
            min_java=17,
            max_java=23,
            neural_search=True,
            ml_commons=True,
        ),
        # OpenSearch 3 needs JDK 21+; it has been run here on Temurin 25.
        NodeVersion(
            "3.3.2",
            "opensearch-3.3",
            min_java=21,
            max_java=None,
            neural_search=False,
            ml_commons=False,
        ),
    )
}


class NodeUnavailable(Exception):
    """This machine cannot build or run the node; ``str(exc)`` is a one-line skip reason."""


class NodeStartError(RuntimeError):
    """The node was built but failed to start or to become healthy (message has the log tail),
    or its jars were built but hold conflicting classes (a bug of ``plugin_classpath``)."""


# --- JDK discovery ------------------------------------------------------------------------

_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?[^"]*"')


def java_major(java: str | os.PathLike[str]) -> int | None:
    """Feature version of a ``java`` executable (8 for "1.8.0_x", 17 for "17.0.15"), or None."""
    return _java_major(os.fspath(java))


@functools.cache
def _java_major(java: str) -> int | None:
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(proc.stderr + proc.stdout)
    if proc.returncode != 0 or match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _java_home_java() -> Path | None:
    java_home = os.environ.get("JAVA_HOME")
    return (Path(java_home) / "bin" / "java").resolve() if java_home else None


def _java_candidates() -> list[Path]:
    """JDKs in order of preference: JAVA_HOME, then /usr/lib/jvm/*, then ``java`` on PATH."""
    found: list[Path] = []
    java_home = _java_home_java()
    if java_home:
        found.append(java_home)
    jvm_dir = Path("/usr/lib/jvm")
    if jvm_dir.is_dir():
        found.extend(sorted(jvm_dir.glob("*/bin/java")))
    on_path = shutil.which("java")
    if on_path:
        found.append(Path(on_path))
    unique: dict[Path, Path] = {}
    for java in found:
        # javac next to java: Maven compiles the launcher with the same JDK.
        if java.is_file() and os.access(java, os.X_OK) and (java.parent / "javac").is_file():
            unique.setdefault(java.resolve(), java.resolve())
    return list(unique)


def find_java(min_major: int, max_major: int | None = None) -> Path | None:
    """A JDK ``java`` whose major version is within [min_major, max_major], or None.

    JAVA_HOME wins when it fits; otherwise the oldest fitting JDK, the one closest to what the
    OpenSearch version was released for."""
    fitting: list[tuple[int, Path]] = []
    java_home = _java_home_java()
    for java in _java_candidates():
        major = java_major(java)
        if major is None or major < min_major or (max_major is not None and major > max_major):
            continue
        if java == java_home:
            return java
        fitting.append((major, java))
    return min(fitting)[1] if fitting else None


def _java_for(version: NodeVersion) -> Path:
    java = find_java(version.min_java, version.max_java)
    if java is None:
        limit = (
            f"{version.min_java}-{version.max_java}" if version.max_java else f"{version.min_java}+"
        )
        raise NodeUnavailable(
            f"OpenSearch {version.version} needs a JDK {limit}; none found "
            "(JAVA_HOME, /usr/lib/jvm, PATH)"
        )
    return java


def _node_version(version: str) -> NodeVersion:
    try:
        return VERSIONS[version]
    except KeyError:
        raise ValueError(
            f"unknown OpenSearch node version {version!r}; known: {', '.join(VERSIONS)}"
        ) from None


def available_versions() -> list[str]:
    """Versions this machine can run: a fitting JDK is present, and Maven is installed or the
    launcher is already built."""
    return [
        v.version
        for v in VERSIONS.values()
        if find_java(v.min_java, v.max_java) is not None
        and (shutil.which("mvn") is not None or _is_fresh(v))
    ]


# --- build ----------------------------------------------------------------------------------


def _output_dir(version: NodeVersion) -> Path:
    return PROJECT_DIR / "target" / version.version


def _classpath_file(version: NodeVersion) -> Path:
    # Written by us after Maven succeeds: launcher classes + Maven runtime classpath + the jars
    # unpacked from plugin zips, one entry per line. Its presence marks a complete build.
    return _output_dir(version) / "runtime-classpath.txt"


def _sources_mtime() -> float:
    files = [PROJECT_DIR / "pom.xml", *(p for p in (PROJECT_DIR / "src").rglob("*") if p.is_file())]
    return max(p.stat().st_mtime for p in files)


def _is_fresh(version: NodeVersion) -> bool:
    out = _classpath_file(version)
    if not out.is_file() or out.stat().st_mtime <= _sources_mtime():
        return False
    # A cleaned Maven repository leaves a classpath pointing at nothing.
    return all(Path(entry).exists() for entry in out.read_text().splitlines())


def build(version: str) -> Path:
    """Build the launcher for ``version`` unless its outputs are up to date; return the file
    listing its runtime classpath (one entry per line). Raises NodeUnavailable."""
    node_version = _node_version(version)
    java = _java_for(node_version)
    if _is_fresh(node_version):
        return _classpath_file(node_version)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise NodeUnavailable("Maven (mvn) is not installed")
    out_dir = _output_dir(node_version)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(out_dir.parent / f".{node_version.version}.lock"):
        if _is_fresh(node_version):  # built by a concurrent process meanwhile
            return _classpath_file(node_version)
        env = {**os.environ, "JAVA_HOME": str(java.parent.parent)}
        cmd = [mvn, "-B", "-q", "-Dstyle.color=never", "-P", node_version.profile, "compile"]
        try:
            proc = subprocess.run(
                cmd,
                cwd=PROJECT_DIR,
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise NodeUnavailable(
                f"Maven build of OpenSearch {version} took over {BUILD_TIMEOUT}s"
            ) from None
        if proc.returncode != 0:
            error = _maven_error(proc.stdout + proc.stderr)
            raise NodeUnavailable(f"Maven build of OpenSearch {version} failed: {error}")
        return _write_runtime_classpath(node_version)


def _write_runtime_classpath(version: NodeVersion) -> Path:
    """After Maven: launcher classes, Maven's classpath, then the plugin jars without
    duplicates, one entry per line; the jars left out go to ``classpath-dropped.txt``."""
    out_dir = _output_dir(version)
    maven_cp = (out_dir / "classpath.txt").read_text().strip()
    maven_jars = [Path(e) for e in maven_cp.split(os.pathsep) if e]
    plugin_jars, dropped = plugin_classpath(maven_jars, (out_dir / "plugins").glob("*/*.jar"))
    conflicts = class_conflicts([*maven_jars, *plugin_jars])
    if conflicts:
        raise NodeStartError(
            f"the classpath of OpenSearch {version.version} has classes that differ between "
            "jars (add a rule to plugin_classpath): " + "; ".join(conflicts[:10])
        )
    (out_dir / "classpath-dropped.txt").write_text("".join(f"{d}\n" for d in dropped))
    entries = [str(out_dir / "classes"), *map(str, maven_jars), *map(str, plugin_jars)]
    target = _classpath_file(version)
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(entries) + "\n")
    tmp.replace(target)
    return target


# "jackson-databind-2.18.8.jar" -> ("jackson-databind", "2.18.8"): the artifact id is everything
# before the first "-<digit>" (true of every jar the profiles resolve or unpack).
_JAR_NAME_RE = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d[^/]*)\.jar$")


def jar_artifact(jar: Path) -> tuple[str, tuple[int, ...]]:
    """Artifact id and numeric version of a jar file name (the whole name and () if it has no
    version)."""
    match = _JAR_NAME_RE.match(jar.name)
    if match is None:
        return jar.name, ()
    return match["artifact"], tuple(int(n) for n in re.findall(r"\d+", match["version"]))


def plugin_classpath(
    maven_jars: list[Path], plugin_jars: Iterable[Path]
) -> tuple[list[Path], list[str]]:
    """The plugin jars to put on the flat classpath after Maven's, and why the others were left
    out. A distribution gives each plugin its own class loader; here all share one, so one copy
    of each library must be chosen, deterministically:

    - a library that core's Maven classpath already has is dropped (core's version wins, as it
      does in a distribution, where core's loader is every plugin loader's parent);
    - among plugins, one jar per artifact: the highest version wins (e.g. gson 2.11.0 of
      ml-commons over 2.10.1 of neural-search); equal versions keep the first plugin
      directory in name order.
    """
    core = {jar_artifact(jar)[0] for jar in maven_jars}
    chosen: dict[str, Path] = {}
    dropped: list[str] = []
    for jar in sorted(plugin_jars, key=lambda p: (p.parent.name, p.name)):
        artifact, version = jar_artifact(jar)
        where = f"{jar.parent.name}/{jar.name}"
        if artifact in core:
            dropped.append(f"{where}: core has {artifact}")
            continue
        kept = chosen.get(artifact)
        if kept is None or version > jar_artifact(kept)[1]:
            if kept is not None:
                dropped.append(f"{kept.parent.name}/{kept.name}: {where} is newer")
            chosen[artifact] = jar
        else:
            dropped.append(f"{where}: {kept.parent.name}/{kept.name} is kept")
    return sorted(chosen.values(), key=lambda p: (p.parent.name, p.name)), dropped


def class_conflicts(jars: list[Path]) -> list[str]:
    """Classes present in several jars with different bytes: the one a JVM loads would depend on
    the classpath order. Identical copies (ml-commons' ml-common classes also shaded into
    neural-search's ml-client jar) are harmless and not reported."""
    seen: dict[str, tuple[int, str]] = {}
    conflicts: list[str] = []
    for jar in jars:
        with zipfile.ZipFile(jar) as archive:
            for info in archive.infolist():
                name = info.filename
                # Multi-release variants and module descriptors legitimately repeat per jar.
                if not name.endswith(".class") or name.startswith("META-INF/"):
                    continue
                if name.endswith("module-info.class"):
                    continue
                first = seen.setdefault(name, (info.CRC, jar.name))
                if first[0] != info.CRC:
                    conflicts.append(f"{name} in {first[1]} and {jar.name}")
    return conflicts


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
# Maven's closing boilerplate, not the error itself.
_MAVEN_NOISE = (
    "COMPILATION ERROR",
    "To see the full stack trace",
    "Re-run Maven",
    "For more information",
    "[Help ",
)


def _maven_error(output: str) -> str:
    """The first informative ``[ERROR]`` line of Maven's output, on one line."""
    for line in _ANSI_RE.sub("", output).splitlines():
        text = line.removeprefix("[ERROR]").strip()
        if line.startswith("[ERROR]") and text and not text.startswith(_MAVEN_NOISE):
            return text[:500]
    return _ANSI_RE.sub("", output).strip()[-500:] or "no output"


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent builds of one version (e.g. pytest-xdist workers)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, Maven copes with most overlaps
        yield
        return
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- run ------------------------------------------------------------------------------------


def _jvm_options(java_major_version: int, heap: str) -> list[str]:
    options = [
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        "-Dfile.encoding=UTF-8",
        "-Djava.locale.providers=SPI,CLDR",
    ]
    # As the OpenSearch distribution's jvm.options: Lucene's vectorised code, native access,
    # and no JDK warnings about netty's Unsafe use.
    if java_major_version >= 21:
        options.append("--add-modules=jdk.incubator.vector")
    if java_major_version >= 22:
        options.append("--enable-native-access=ALL-UNNAMED")
    if java_major_version >= 24:
        options.append("--sun-misc-unsafe-memory-access=allow")
    return options


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _read_lines(stream: IO[str], out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put(None)


# The node is on 127.0.0.1: never route the health check through an http_proxy from the env.
_LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_green(proc: subprocess.Popen[str], url: str, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise OSError(f"the JVM exited with status {proc.returncode}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("cluster health did not turn green")
        wait = max(1, int(min(remaining, 30)))
        health_url = f"{url}/_cluster/health?wait_for_status=green&timeout={wait}s"
        try:
            with _LOCAL_OPENER.open(health_url, timeout=wait + 5) as response:
                if json.load(response).get("status") == "green":
                    return
        except urllib.error.HTTPError as exc:  # 408 when green was not reached within `wait`
            if exc.code != 408:
                raise
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)


_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def _stop(proc: subprocess.Popen[str], grace: float = 30) -> None:
    """Close stdin (the launcher then shuts the node down), then escalate to SIGTERM and
    SIGKILL of the whole process group, so nothing outlives us; a second Ctrl-C while waiting
    kills at once."""
    try:
        with contextlib.suppress(OSError):
            if proc.stdin:
                proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
    finally:
        # Still running after SIGTERM, or we were interrupted while waiting: kill the group.
        if proc.poll() is None:
            _signal_group(proc, _KILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@contextlib.contextmanager
def run(
    version: str, *, heap: str = "1g", timeout: float = 180, home: Path | None = None
) -> Iterator[str]:
    """Start an OpenSearch ``version`` node, wait until it is started and its cluster is green,
    and yield its URL ``http://127.0.0.1:<port>``. The node, its process group and its
    temporary home are gone when the block exits (also on KeyboardInterrupt).

    ``home``: a directory of the caller's that outlives the node (its data, cluster state and
    ml-commons' system indices), so a second ``run`` with the same ``home`` is the same node
    restarted; the caller removes it."""
    node_version = _node_version(version)
    classpath = build(version).read_text().splitlines()
    java = _java_for(node_version)
    major = java_major(java) or node_version.min_java
    keep_home = home is not None
    if home is None:
        home = Path(tempfile.mkdtemp(prefix=f"splade-es-opensearch-{version}-"))
    home.mkdir(parents=True, exist_ok=True)
    stderr_path = home / "stderr.log"
    cmd = [
        str(java),
        *_jvm_options(major, heap),
        "-cp",
        os.pathsep.join(classpath),
        MAIN_CLASS,
        str(home),
        # The launcher removes its home itself once the node is closed: covers a parent killed
        # with SIGKILL, whose ``finally`` below never runs.
        *([] if keep_home else ["--delete-home"]),
    ]
    proc: subprocess.Popen[str] | None = None
    try:
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                # Own process group: terminal Ctrl-C goes to us, and we can kill the group.
                start_new_session=sys.platform != "win32",
                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
            )
        url = _wait_ready(proc, version, home, timeout)
        yield url
    finally:
        try:
            if proc is not None:
                _stop(proc)
        finally:
            if not keep_home:
                shutil.rmtree(home, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[str], version: str, home: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()

    def failure(what: str) -> NodeStartError:
        logs = [f"--- {home / 'stderr.log'}", _tail(home / "stderr.log")]
        cluster_log = home / "logs" / "splade-es-test.log"
        if cluster_log.exists():
            logs += [f"--- {cluster_log}", _tail(cluster_log)]
        return NodeStartError(f"OpenSearch {version} node {what}\n" + "\n".join(logs))

    url = None
    while url is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise failure(f"not started within {timeout:.0f}s")
        try:
            line = lines.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            if proc.poll() is not None:
                raise failure(f"exited with status {proc.returncode} before it was ready") from None
            continue
        if line is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            raise failure(f"exited with status {proc.returncode} before it was ready")
        if line.startswith(READY_PREFIX):
            url = line[len(READY_PREFIX) :].strip()
    try:
        _wait_green(proc, url, deadline)
    except (TimeoutError, OSError, urllib.error.URLError) as exc:
        raise failure(f"started at {url} but its health is not green: {exc}") from exc
    return url


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.engines.opensearch_node build [VERSION ...]``: build the launchers
    up front (CI does, so that Maven's output is not hidden inside the first test). A machine
    that cannot build one says why and exits 0: the harness then skips or falls back."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "build":
        print("usage: python -m tests.engines.opensearch_node build [VERSION ...]", file=sys.stderr)
        return 2
    versions = args[1:] or available_versions()
    if not versions:
        print("opensearch-node: no version can be built here (no fitting JDK, or no Maven)")
    for version in versions:
        started = time.monotonic()
        try:
            path = build(version)
        except NodeUnavailable as exc:
            print(f"opensearch-node {version}: unavailable: {exc}")
            continue
        print(f"opensearch-node {version}: built in {time.monotonic() - started:.1f}s ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
