#!/usr/bin/python3
"""The Dockerfile builds kvrd with the very steps of scripts/start.sh (the README's recipe), and CI
(.ci/run -> scripts/test.sh) runs the same dependency script and CMake configuration, so CI
exercises the image's recipe. Fails when they drift apart, and checks the rest of what the
image promises: CUDA 13 devel/runtime stages, the runtime library list, a non-root user, the
ports, the health check and the files it copies."""
import os
import re
import shlex
import subprocess
import sys

ROOT = os.environ.get("KVR_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    print(("ok    " if cond else "FAIL  ") + what)


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def norm(cmd):
    return " ".join(cmd.split())


def parse_dockerfile(text):
    """[(stage, instruction, argument)], continuation lines joined, comments dropped."""
    out, stage, buf = [], None, ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line, buf = buf + line, ""
        instr, _, arg = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.search(r"\bAS\s+(\S+)", arg, re.I)
            stage = m.group(1) if m else arg
        out.append((stage, instr, arg.strip()))
    return out


def script_steps(text):
    """A shell script's command lines, less `set`, `cd`, comments and variable assignments."""
    steps = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(("set ", "cd ")):
            continue
        if re.match(r"^[A-Z_]+=", line):
            continue
        steps.append(norm(line))
    return steps


def main():
    docker = parse_dockerfile(read("Dockerfile"))
    start = script_steps(read("scripts/start.sh"))
    test = script_steps(read("scripts/test.sh"))

    froms = [(s, a) for s, i, a in docker if i == "FROM"]
    check([s for s, _ in froms] == ["build", "runtime"], f"two stages, build then runtime: {froms}")
    args = {m.group(1): m.group(2) for s, i, a in docker if i == "ARG" and s is None
            for m in [re.match(r"(\w+)=(\S+)", a)] if m}
    cuda = args.get("CUDA_VERSION", "")
    check(cuda.startswith("13."), f"CUDA 13 images: CUDA_VERSION={cuda!r}")
    build_from = dict(froms).get("build", "")
    run_from = dict(froms).get("runtime", "")
    check(build_from.startswith("nvidia/cuda:${CUDA_VERSION}-devel-ubuntu"), f"build stage on the CUDA devel image: {build_from}")
    check(run_from.startswith("nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu"), f"runtime stage on the CUDA runtime image: {run_from}")

    # --- the recipe: start.sh's steps, in order, as the build stage's RUN steps ---------------
    exec_line = [s for s in start if s.startswith("exec ")]
    check(len(exec_line) == 1 and exec_line[0].startswith('exec "$BUILD_DIR/server/kvrd"'),
          f"scripts/start.sh ends by running $BUILD_DIR/server/kvrd: {exec_line}")
    # The build recipe: start.sh's steps up to its last `cmake --build`; the rest starts kvrd.
    builds = [i for i, s in enumerate(start) if s.startswith("cmake --build")]
    recipe = start[:builds[-1] + 1] if builds else []
    check(len(recipe) >= 3 and recipe[0] == "scripts/install-deps.sh", f"start.sh's build recipe: {recipe}")
    build_runs = [norm(a) for s, i, a in docker if s == "build" and i == "RUN"]
    # The recipe's steps appear, in order, as whole RUN steps; every build-stage RUN that calls
    # scripts/ or cmake is one of them.
    pos = 0
    for step in recipe:
        try:
            pos = build_runs.index(step, pos) + 1
            check(True, f"Dockerfile build stage runs start.sh's step: {step}")
        except ValueError:
            check(False, f"Dockerfile build stage runs start.sh's step (in order): {step}\n      RUN steps: {build_runs}")
    for run in build_runs:
        if re.search(r"(^|[\s;&|])(scripts/|cmake\b|ninja\b|make\b)", run):
            check(run in recipe, f"build-stage RUN step is one of start.sh's: {run}")
    # start.sh serves the demo model, prepared by models/prepare_demo.sh; the image bakes it in.
    if any("models/prepare_demo.sh" in s for s in start):
        check(any(re.match(r"models/prepare_demo\.sh(\s|$)", r) for r in build_runs),
              "start.sh prepares the demo model with models/prepare_demo.sh: so does the build stage")
    env = {}
    for s, i, a in docker:
        if s == "build" and i == "ENV":
            for tok in shlex.split(a):
                k, _, v = tok.partition("=")
                env[k] = v
    check(env.get("BUILD_DIR") == "build", f"ENV BUILD_DIR=build in the build stage: {env.get('BUILD_DIR')!r}")
    check("-DKVR_CUDA=ON" in env.get("KVR_CMAKE_ARGS", ""), f"the image requires the CUDA backend: KVR_CMAKE_ARGS={env.get('KVR_CMAKE_ARGS')!r}")
    copies = [a for s, i, a in docker if i == "COPY"]
    check(any(a.split()[0] == "--from=build" and a.split()[1] == "/src/kvr/build/server/kvrd" for a in copies),
          "runtime copies $BUILD_DIR/server/kvrd from the build stage")
    workdir = [a for s, i, a in docker if s == "build" and i == "WORKDIR"]
    check(workdir == ["/src/kvr"], f"build stage WORKDIR /src/kvr: {workdir}")

    # --- CI runs the same script and CMake configuration ------------------------------------
    ci = script_steps(read(".ci/run"))
    check("scripts/test.sh" in ci, f".ci/run runs scripts/test.sh: {ci}")
    check(test and test[0] == "scripts/install-deps.sh", f"scripts/test.sh starts with scripts/install-deps.sh: {test[:1]}")
    start_cfg = [s for s in recipe if s.startswith("cmake -S")]
    test_cfg = [s for s in test if s.startswith("cmake -S")]
    check(len(start_cfg) == 1 and len(test_cfg) == 1 and
          norm(start_cfg[0].replace(" -DKVR_TESTS=OFF", "")) == test_cfg[0],
          f"CI configures as the Dockerfile does, tests aside:\n      start.sh: {start_cfg}\n      test.sh:  {test_cfg}")
    start_build = [s for s in recipe if s.startswith("cmake --build")]
    test_build = [s for s in test if s.startswith("cmake --build")]
    check(len(start_build) == 1 and len(test_build) == 1 and start_build[0].startswith(test_build[0]),
          f"CI builds as the Dockerfile does (every target, kvrd among them): {start_build} {test_build}")

    # --- runtime stage ---------------------------------------------------------------------
    runtime_runs = [norm(a) for s, i, a in docker if s == "runtime" and i == "RUN"]
    check(any(re.search(r"install-deps\.sh --runtime(\s|$)", r) for r in runtime_runs),
          "runtime stage installs install-deps.sh --runtime")
    check(any(a.split()[0] == "scripts/install-deps.sh" for a in copies if not a.startswith("--from")),
          "both stages take install-deps.sh from the source tree")
    users = [a for s, i, a in docker if s == "runtime" and i == "USER"]
    check(len(users) == 1 and users[0] not in ("root", "0") and not users[0].startswith("0:"),
          f"runs as a non-root user: {users}")
    check(any("useradd" in r and users and users[0] in r for r in runtime_runs), "that user is created")
    exposed = sorted(p for s, i, a in docker if i == "EXPOSE" for p in a.split())
    check(exposed == ["50051", "9464"], f"EXPOSE 50051 (gRPC) and 9464 (metrics): {exposed}")
    hc = [a for s, i, a in docker if i == "HEALTHCHECK"]
    check(len(hc) == 1 and "/opt/kvr/bin/kvr-healthcheck" in hc[0], f"HEALTHCHECK through kvr-healthcheck: {hc}")
    check(any(a.split()[:2] == ["deploy/kvrd/healthcheck.py", "/opt/kvr/bin/kvr-healthcheck"] for a in copies),
          "kvr-healthcheck is deploy/kvrd/healthcheck.py")
    entry = [a for s, i, a in docker if i == "ENTRYPOINT"]
    check(entry == ['["/opt/kvr/bin/kvrd-entrypoint"]'] and
          any(a.split()[:2] == ["deploy/kvrd/entrypoint.sh", "/opt/kvr/bin/kvrd-entrypoint"] for a in copies),
          f"ENTRYPOINT is deploy/kvrd/entrypoint.sh: {entry}")
    # Listening inside the container on every interface, on the exposed ports.
    entry_sh = read("deploy/kvrd/entrypoint.sh")
    check("0.0.0.0:50051" in entry_sh and "0.0.0.0:9464" in entry_sh, "the entrypoint listens on 0.0.0.0:50051 and 0.0.0.0:9464")

    # --- every file the build copies from the context exists and is not .dockerignore'd -----
    ignore = [l.strip() for l in read(".dockerignore").splitlines() if l.strip() and not l.startswith("#")]

    def ignored(path):
        verdict = False
        for pat in ignore:
            neg = pat.startswith("!")
            p = pat[1:] if neg else pat
            rx = "^" + re.escape(p).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*") + "(/.*)?$"
            if re.match(rx, path):
                verdict = not neg
        return verdict

    for a in copies:
        parts = a.split()
        if parts[0].startswith("--from"):
            continue
        for src in parts[:-1]:
            if src == ".":
                continue
            check(os.path.exists(os.path.join(ROOT, src)), f"COPY source exists: {src}")
            check(not ignored(src), f"COPY source is not excluded by .dockerignore: {src}")
    # The build needs the sources: nothing CMake reads may be ignored.
    for needed in ["CMakeLists.txt", "cmake/kvr_helpers.cmake", "engine", "kernels", "proto", "server", "tools",
                   "tests/CMakeLists.txt", "tests/deploy/CMakeLists.txt",
                   "scripts/install-deps.sh", "models/prepare_demo.sh", "models/kvr-demo/config.json",
                   "tests/tokenizer/make_llama2_tokenizer_json.js"]:
        check(not ignored(needed), f"the build context keeps {needed}")
    check(ignored("build/server/kvrd") and ignored(".git/HEAD") and ignored("models/other-model/x.safetensors"),
          "the build context leaves out build trees, .git and other models")
    demo = os.path.join(ROOT, "models/kvr-demo/config.json")
    check(os.path.exists(demo), "the demo model baked into the image is in the tree (models/kvr-demo/config.json)")

    # --- install-deps.sh knows both distributions ---------------------------------------------
    deps = read("scripts/install-deps.sh")
    check("docker-compose" in deps and re.search(r"\bprometheus\b", deps), "install-deps.sh installs docker-compose and prometheus (promtool)")
    check("t64" in deps, "install-deps.sh --runtime resolves Ubuntu 24.04's t64 library names")
    r = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts/install-deps.sh")], capture_output=True, text=True)
    check(r.returncode == 0, f"install-deps.sh parses: {r.stderr}")


if __name__ == "__main__":
    main()
    print(f"{'FAILED' if failures else 'PASSED'}: {len(failures)} failed check(s)")
    sys.exit(1 if failures else 0)
