"""``make image``: build ringrift-remediator:<version> from the Dockerfile, unchanged.

    python3 tests/image/build.py

The Dockerfile's base (``python:3.11-slim-bookworm``) is pulled when a registry answers within
PULL_TIMEOUT. Otherwise the copy already in the engine's storage is used, and where there is none a
stand-in is made: mmdebstrap builds a minimal Debian of the same release with its python3 (the same
minor version, checked) from the Debian mirror this machine's apt uses, and it is imported under the
official name, so the Dockerfile builds as it would on the real base. The stand-in is labelled
``org.ringrift.base-stand-in``; derived images inherit the label, so an image says what it stands on.

podman builds with the host's CA bundle mounted read-only, for hosts whose outbound TLS is re-signed
by a proxy: pip in the build then trusts what the host trusts. The bundle is never in a layer.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from container_engine import IMAGE_ID_FILE, ROOT, STATE_DIR, Engine, EngineError, detect, image_ref

PULL_TIMEOUT = 30  # seconds to wait for a registry before making the stand-in
STAND_IN_LABEL = "org.ringrift.base-stand-in"
STAND_IN_PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
# As the official slim images do: no manuals, docs (but their copyright files) or translations.
STAND_IN_DPKG = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
# What the official image sets and a bare Debian lacks; PIP_BREAK_SYSTEM_PACKAGES because Debian's
# python is "externally managed" and the Dockerfile pip-installs into it, as it does on the official one.
STAND_IN_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "PIP_BREAK_SYSTEM_PACKAGES=1",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
OFFICIAL_BASE = re.compile(r"^(?:docker\.io/library/)?python:(?P<python>\d+\.\d+)-slim-(?P<suite>[a-z]+)$")
APT_DIR = Path("/etc/apt")


def say(message: str) -> None:
    print(f"[make image] {message}", flush=True)


def dockerfile_bases(dockerfile: Path) -> list[str]:
    """The images the Dockerfile's FROM lines name (build stages by their alias excluded)."""
    bases: list[str] = []
    aliases: set[str] = set()
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "FROM":
            if words[1] not in aliases and words[1] not in bases:
                bases.append(words[1])
            if len(words) == 4 and words[2].upper() == "AS":
                aliases.add(words[3])
    return bases


def qualified(ref: str) -> str:
    """docker.io/library/NAME for a short name, as docker would pull it."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if "/" in ref else f"docker.io/library/{ref}"


# -- this machine's Debian mirror -----------------------------------------------------------------


def _one_line_sources(text: str) -> list[tuple[str, str, list[str]]]:
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            entries.append((words[0], words[1], words[2:]))
    return entries


def _deb822_sources(text: str) -> list[tuple[str, str, list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                entries.append((uri, suite, fields.get("components", "main").split()))
    return entries


def host_apt_sources() -> list[tuple[str, str, list[str]]]:
    """(uri, suite, components) of every enabled ``deb`` source this machine's apt reads."""
    entries = []
    files = [APT_DIR / "sources.list", *sorted((APT_DIR / "sources.list.d").glob("*.list"))]
    for path in files:
        if path.is_file():
            entries += _one_line_sources(path.read_text())
    for path in sorted((APT_DIR / "sources.list.d").glob("*.sources")):
        entries += _deb822_sources(path.read_text())
    return entries


def host_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return ""


def mirror_lines(suite: str) -> list[str]:
    """sources.list lines for ``suite`` (and its -updates/-security) from this machine's own Debian
    mirror: the entries apt uses for the host's release, renamed to ``suite`` when that differs."""
    host = host_codename()
    lines = []
    for uri, dist, components in host_apt_sources():
        release, dash, pocket = dist.partition("-")
        if release not in (host, suite) or (dash and pocket not in ("updates", "security")):
            continue
        line = f"deb {uri} {suite}{dash}{pocket} {' '.join(components or ['main'])}"
        if line not in lines:
            lines.append(line)
    if not lines:
        raise EngineError(
            f"no Debian apt source for {host or '?'} or {suite} in {APT_DIR}: cannot make the stand-in "
            "base; pull the official one where a registry is reachable"
        )
    return lines


# -- the base image ----------------------------------------------------------------------------------


def pull(engine: Engine, ref: str) -> bool:
    say(f"pulling {ref} (at most {PULL_TIMEOUT} s)")
    try:
        result = engine.run("pull", ref, check=False, timeout=PULL_TIMEOUT)
    except subprocess.TimeoutExpired:
        say("no answer from the registry")
        return False
    if result.returncode != 0:
        say("pull failed: " + (result.stderr.strip().splitlines() or ["?"])[-1])
    return result.returncode == 0


def make_stand_in(engine: Engine, ref: str) -> None:
    match = OFFICIAL_BASE.match(ref)
    if not match:
        raise EngineError(f"cannot make a stand-in for {ref}: only python:X.Y-slim-<debian release> is known")
    suite, python = match["suite"], match["python"]
    mirrors = mirror_lines(suite)
    rootfs = STATE_DIR / f"stand-in-{suite}.tar"
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    where = "; ".join(" ".join(m.split()[1:3]) for m in mirrors)  # "URI suite" of each
    say(f"making a stand-in for {ref}: mmdebstrap {suite} from {where}")
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={STAND_IN_PACKAGES}"]
        + [f"--dpkgopt={opt}" for opt in STAND_IN_DPKG]
        + [suite, str(rootfs), *mirrors],
        check=True,
    )
    try:
        changes = [f"ENV {env}" for env in STAND_IN_ENV]
        changes += [f"LABEL {STAND_IN_LABEL}=mmdebstrap-{suite}", 'CMD ["python3"]']
        engine.run("import", *(arg for c in changes for arg in ("--change", c)), str(rootfs), ref)
    finally:
        rootfs.unlink(missing_ok=True)
    got = engine.run("run", "--rm", ref, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    if got.stdout.strip() != python:
        engine.run("rmi", ref, check=False)
        raise EngineError(f"{suite}'s python3 is {got.stdout.strip()}, not the {python} that {ref} has")


def ensure_base(engine: Engine, ref: str) -> str:
    """Make ``ref`` present in the engine's storage; returns which copy: official, local or stand-in."""
    ref = qualified(ref)
    if pull(engine, ref):
        return "official"
    if engine.image_exists(ref):
        labels = engine.run("image", "inspect", "--format", "{{json .Config.Labels}}", ref).stdout
        return "stand-in (kept)" if STAND_IN_LABEL in labels else "local copy"
    make_stand_in(engine, ref)
    return "stand-in (new)"


# -- the image -----------------------------------------------------------------------------------------


def build(engine: Engine, ref: str) -> None:
    IMAGE_ID_FILE.unlink(missing_ok=True)
    argv = ["build", "--tag", ref, "--iidfile", str(IMAGE_ID_FILE), "--file", str(ROOT / "Dockerfile")]
    if engine.name == "podman":
        argv.append("--pull=never")  # ensure_base decided which base; never a registry round trip here
        if HOST_CA_BUNDLE.is_file():
            argv += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    say(f"{engine.name} {shlex.join(argv)} .")
    engine.run(*argv, str(ROOT), capture=False)


def main() -> int:
    started = time.monotonic()
    try:
        engine = detect()
        bases = {base: ensure_base(engine, base) for base in dockerfile_bases(ROOT / "Dockerfile")}
        ref = image_ref()
        build(engine, ref)
    except EngineError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip()
        print(f"make image: {shlex.join(exc.cmd)} exited {exc.returncode}\n{detail}", file=sys.stderr)
        return 1
    size = engine.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip()
    for base, how in bases.items():
        say(f"base {base}: {how}")
    say(f"{ref}: {int(size) / 1e6:.0f} MB, built by {engine.name} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
