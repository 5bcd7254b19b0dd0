"""deploy/Dockerfile, checked without Docker (CI has none): its stages and instructions, and that
the runtime stage's packages provide every shared library the binary needs.

The library check reads the binary that CI builds with the same scripts as the image's build
stage: `readelf -d` lists what it links directly, `ldd` everything it loads; `dpkg -S` maps
each library to its Debian package. A directly linked library's package must be installed by
the runtime stage (or be in debian:12-slim already); every other library's package must come
with those (their Depends, followed through dpkg's database). Both stages are Debian 12, as is
this machine, so the package names and dependencies are the image's.

    python3 -m unittest -v test_dockerfile      (from tests/deploy; BULWARK_BIN or build/bulwark)
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import unittest
from pathlib import Path

import dockerfile
from dockerfile import REPO_DIR

BINARY = Path(os.environ.get("BULWARK_BIN") or REPO_DIR / "build" / "bulwark")
RUNTIME_BINARY = "/usr/local/bin/bulwark"
IMAGE_CONFIG = "/etc/bulwark/proxy.yaml"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def packages_of(libraries: list[str]) -> dict[str, str]:
    """library path -> the Debian package that ships it, with one dpkg -S call (usrmerge: the
    /lib and /usr/lib forms of the path and of its target are all tried)."""
    forms = {}
    for library in libraries:
        for path in (library, os.path.realpath(library)):
            for form in (path, path[4:] if path.startswith("/usr/") else "/usr" + path):
                forms.setdefault(form, library)
    result = subprocess.run(["dpkg", "-S", *forms], capture_output=True, text=True)
    found = {}
    for line in result.stdout.splitlines():
        package, _, path = line.partition(": ")
        if path.strip() in forms:
            found.setdefault(forms[path.strip()], package.split(":")[0].strip())
    missing = sorted(set(libraries) - set(found))
    if missing:
        raise AssertionError(f"no Debian package ships {missing}")
    return found


def installed_packages() -> dict[str, dict[str, str]]:
    """Installed packages: name -> {priority, essential, depends}."""
    out = run("dpkg-query", "-W", "-f",
              "${Package}\t${db:Status-Abbrev}\t${Priority}\t${Essential}\t${Pre-Depends}, ${Depends}\n")
    packages = {}
    for line in out.splitlines():
        name, status, priority, essential, depends = line.split("\t")
        if status.startswith("ii"):
            packages[name] = {"priority": priority, "essential": essential, "depends": depends}
    return packages


def dependency_closure(roots: set[str], packages: dict[str, dict[str, str]]) -> set[str]:
    """roots and everything they depend on (alternatives: those installed here)."""
    seen: set[str] = set()
    todo = [r for r in roots if r in packages]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for clause in packages[name]["depends"].split(","):
            for alternative in clause.split("|"):
                dep = re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", alternative).strip().split(":")[0]
                if dep in packages and dep not in seen:
                    todo.append(dep)
    return seen


def base_image_packages(packages: dict[str, dict[str, str]]) -> set[str]:
    """What debian:12-slim already holds: the Essential and Priority: required packages (the
    minbase set it is built from) and their dependencies."""
    roots = {n for n, p in packages.items() if p["essential"] == "yes" or p["priority"] == "required"}
    return dependency_closure(roots, packages)


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.instructions, cls.stages = dockerfile.parse()
        cls.build, cls.runtime = cls.stages[0], cls.stages[-1]

    def test_two_stages_on_debian_12(self):
        self.assertGreaterEqual(len(self.stages), 2, "a build stage and a runtime stage")
        for stage in self.stages:
            self.assertRegex(stage.image, r"^debian:(12|bookworm)(-slim)?(@sha256:[0-9a-f]{64})?$",
                             "every stage is Debian 12, like CI")
        self.assertRegex(self.runtime.image, r"^debian:(12|bookworm)-slim", "the runtime stage is slim")
        self.assertTrue(self.build.name, "the build stage is named, for COPY --from")

    def test_build_stage_runs_the_ci_scripts(self):
        runs = " && ".join(i.args for i in self.build.all("RUN"))
        self.assertRegex(runs, r"\bbash scripts/deps\.sh\b", "dependencies via scripts/deps.sh")
        self.assertRegex(runs, r"\bbash scripts/build\.sh\b", "the build via scripts/build.sh")
        copies = [i.args.split() for i in self.build.all("COPY")]
        self.assertIn([".", "."], copies, "the build stage gets the whole repository")
        deps_copy = next(i for i, c in enumerate(self.build.instructions) if c.keyword == "COPY")
        self.assertIn("scripts/deps.sh", self.build.instructions[deps_copy].args,
                      "deps.sh is copied (and run) before the sources, so its layer is cached")

    def test_runtime_stage_carries_the_binary_and_its_config(self):
        copies = [i.args.split() for i in self.runtime.all("COPY")]
        self.assertIn([f"--from={self.build.name}", RUNTIME_BINARY, RUNTIME_BINARY], copies)
        config = next((c for c in copies if c[-1] == IMAGE_CONFIG), None)
        self.assertIsNotNone(config, f"a default config at {IMAGE_CONFIG}")
        self.assertTrue((REPO_DIR / config[0]).is_file(), f"{config[0]} exists")
        for copy in copies:
            if not copy[0].startswith("--from"):
                for source in copy[:-1]:
                    self.assertTrue((REPO_DIR / source).exists(), f"COPY source {source} exists")

    def test_entrypoint_and_cmd(self):
        self.assertEqual(self.runtime.last("ENTRYPOINT").exec_form(), [RUNTIME_BINARY])
        self.assertEqual(self.runtime.last("CMD").exec_form(), ["--config", IMAGE_CONFIG])

    def test_runs_as_a_numeric_non_root_user(self):
        user = self.runtime.last("USER")
        self.assertIsNotNone(user, "USER in the runtime stage")
        match = re.fullmatch(r"(\d+)(?::(\d+))?", user.args.strip())
        self.assertIsNotNone(match, "numeric UID[:GID], so runAsNonRoot can verify it")
        self.assertNotEqual(int(match.group(1)), 0)
        after_user = self.runtime.instructions[self.runtime.instructions.index(user):]
        self.assertFalse([i for i in after_user if i.keyword == "RUN"], "nothing runs as root after USER")

    def test_exposes_the_proxy_and_admin_ports(self):
        ports = {p.split("/")[0] for i in self.runtime.all("EXPOSE") for p in i.args.split()}
        self.assertLessEqual({"8080", "9090"}, ports)

    def test_healthcheck_uses_healthz_with_tools_in_the_image(self):
        command = dockerfile.healthcheck_command(self.runtime)
        self.assertIn("/healthz", " ".join(command))
        # bash is Essential in Debian, so debian:12-slim has it; curl or wget would need a package.
        self.assertIn(command[0], ("/bin/bash", "/usr/bin/bash", RUNTIME_BINARY))
        options = dockerfile.healthcheck_options(self.runtime)
        for key in ("interval", "timeout"):
            self.assertIn(key, options)

    def test_apt_lists_are_removed_in_the_same_layer(self):
        for stage in self.stages:
            for run in stage.all("RUN"):
                if dockerfile.apt_packages(run):
                    self.assertIn("--no-install-recommends", run.args, f"line {run.line}")
                    self.assertIn("rm -rf /var/lib/apt/lists", run.args, f"line {run.line}")

    def test_build_context_ignore_file(self):
        ignore = REPO_DIR / "deploy" / "Dockerfile.dockerignore"
        self.assertTrue(ignore.is_file(), "BuildKit reads deploy/Dockerfile.dockerignore for -f deploy/Dockerfile")
        patterns = [l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
        for path in (".git", "build", "build-tsan", "tests/e2e/node_modules", "tests/deploy/node_modules"):
            self.assertTrue(any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/")
                                or fnmatch.fnmatch(path, p.replace("**/", "*/")) for p in patterns),
                            f"{path} stays out of the build context")
        for needed in ("scripts/deps.sh", "deploy/proxy.yaml", "proxy/main.cc", "CMakeLists.txt",
                       "tests/CMakeLists.txt"):
            self.assertFalse(any(fnmatch.fnmatch(needed, p) for p in patterns), f"{needed} is sent")

    def test_default_config_is_valid_and_container_friendly(self):
        config = REPO_DIR / "deploy" / "proxy.yaml"
        text = config.read_text()
        result = subprocess.run([str(BINARY), "--check-config", str(config)], capture_output=True,
                                text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "ok"), result.stdout + result.stderr)
        # Loopback by default (the API key must not be lent to the network), admin on all
        # interfaces for probes and scrapes, and the admin default the HEALTHCHECK assumes.
        self.assertRegex(text, r"listen: \$\{BULWARK_LISTEN:-127\.0\.0\.1:8080\}")
        self.assertRegex(text, r"admin_listen: \$\{BULWARK_ADMIN_LISTEN:-0\.0\.0\.0:9090\}")
        self.assertIn("BULWARK_ADMIN_LISTEN:-0.0.0.0:9090", " ".join(dockerfile.healthcheck_command(self.runtime)))
        self.assertRegex(text, r"format: json")

    def test_runtime_packages_provide_every_library_the_binary_loads(self):
        for tool in ("readelf", "ldd", "dpkg", "dpkg-query"):
            self.assertTrue(shutil.which(tool), f"{tool} is needed for this check")
        self.assertTrue(BINARY.is_file(), f"build the binary first ({BINARY})")
        runtime_runs = [r for r in self.runtime.all("RUN") if dockerfile.apt_packages(r)]
        listed = {p for r in runtime_runs for p in dockerfile.apt_packages(r)}
        self.assertIn("ca-certificates", listed, "CA certificates for TLS to the upstream")

        packages = installed_packages()
        unknown = sorted(p for p in listed if p not in packages)
        self.assertEqual(unknown, [], "runtime packages that are not Debian 12 package names here")
        base = base_image_packages(packages)
        available = dependency_closure(listed, packages) | base

        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-d", str(BINARY))))
        loaded = {}
        for line in run("ldd", str(BINARY)).splitlines():
            match = re.match(r"\s*(\S+)\s+=>\s+(/\S+)", line)
            if match:
                loaded[match.group(1)] = match.group(2)
            elif "not found" in line:
                self.fail(f"ldd: {line.strip()}")
        self.assertLessEqual(needed - {"ld-linux-x86-64.so.2"}, set(loaded), "ldd resolves every NEEDED library")

        package_of = packages_of(sorted(loaded.values()))
        missing_direct = sorted(f"{lib} ({package_of[loaded[lib]]})" for lib in needed
                                if package_of[loaded[lib]] not in listed | base)
        self.assertEqual(missing_direct, [], "directly linked libraries whose package the runtime stage lacks")
        missing = sorted(f"{lib} ({package_of[path]})" for lib, path in loaded.items()
                         if package_of[path] not in available)
        self.assertEqual(missing, [], "loaded libraries that the runtime packages do not bring")

        direct_packages = {package_of[loaded[lib]] for lib in needed}
        extra = sorted(listed - direct_packages - {"ca-certificates"})
        self.assertEqual(extra, [], "runtime packages the binary does not link (image bloat)")


if __name__ == "__main__":
    unittest.main()
