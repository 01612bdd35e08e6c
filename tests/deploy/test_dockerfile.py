"""The container image (Dockerfile): no container engine runs here, so these tests read the file.

- DockerfileTest: the build stage runs the README's own build commands and nothing else builds;
  every path it copies from the repository exists (and the build context keeps it); the image runs as
  a numeric non-root user, from Debian 12, with the health check, entrypoint, ports and volumes that
  the image's own configuration and the Kubernetes base expect.
- RuntimePackagesTest (needs ZOOGATE_BIN): scripts/runtime-packages.sh, which the build stage uses to
  pick the runtime stage's packages, names installed runtime packages (no -dev) for the real zoogate.
"""
import fnmatch
import json
import os
import re
import shlex
import subprocess
import unittest

import yaml

from deploy_support import DOCKERFILE, IMAGE_CONFIG_FILE, REPO, read, run, zoogate_bin

# Commands that would build or fetch code outside the README's scripts.
FORBIDDEN_BUILD_COMMANDS = {"cmake", "ninja", "make", "g++", "gcc", "c++", "clang", "clang++", "pip", "pip3", "npm"}


class Instruction:
    def __init__(self, keyword, arguments, line):
        self.keyword = keyword
        self.arguments = arguments
        self.line = line

    def __repr__(self):
        return f"Dockerfile:{self.line}: {self.keyword} {self.arguments}"


def parse_dockerfile(text):
    """[Instruction] with continuation lines joined and comments dropped."""
    instructions = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = ""
    return instructions


def split_stages(instructions):
    """[(stage name or index, base image, [Instruction])]."""
    stages = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            words = [word for word in words if not word.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages.append((name, words[0], []))
        elif stages:
            stages[-1][2].append(instruction)
        else:
            raise AssertionError(f"{instruction} comes before the first FROM")
    return stages


def shell_commands(run_arguments):
    """The simple commands of a RUN line (split at &&, ||, ; and |), each as a word list without
    leading VAR=value assignments."""
    commands = []
    for part in re.split(r"&&|\|\||;|\|", run_arguments):
        words = shlex.split(part)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)
        if words:
            commands.append(words)
    return commands


def normalize_script(word):
    return word[2:] if word.startswith("./") else word


def exec_form(arguments):
    """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, VOLUME)."""
    return json.loads(arguments)


def readme_build_commands():
    """The README's build line ("scripts/install-deps.sh build && scripts/build.sh"), as commands."""
    for line in read(os.path.join(REPO, "README.md")).splitlines():
        if "scripts/install-deps.sh build" in line and "scripts/build.sh" in line:
            return shell_commands(line.split("#")[0])
    raise AssertionError("README.md has no build line with scripts/install-deps.sh build && scripts/build.sh")


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.instructions = parse_dockerfile(read(DOCKERFILE))
        cls.stages = split_stages(cls.instructions)
        cls.image_config = yaml.safe_load(read(IMAGE_CONFIG_FILE))

    def final_stage(self):
        return self.stages[-1]

    def build_stage(self):
        """The stage whose RUN lines call scripts/build.sh."""
        for stage in self.stages:
            for instruction in stage[2]:
                if instruction.keyword == "RUN" and "scripts/build.sh" in instruction.arguments:
                    return stage
        self.fail("no stage runs scripts/build.sh")

    def test_multi_stage_on_debian_12(self):
        self.assertGreaterEqual(len(self.stages), 2, "a build stage and a runtime stage")
        for name, base, _ in self.stages:
            self.assertRegex(base, r"^debian:(12|bookworm)(-slim)?$", f"stage {name} is not on Debian 12")
        self.assertIsNot(self.build_stage(), self.final_stage(), "the runtime stage must not be the build stage")

    def test_build_stage_runs_the_readme_build(self):
        wanted = [[normalize_script(word) for word in command] for command in readme_build_commands()]
        self.assertEqual([command[0] for command in wanted], ["scripts/install-deps.sh", "scripts/build.sh"])
        ran = [[normalize_script(word) for word in command]
               for instruction in self.build_stage()[2] if instruction.keyword == "RUN"
               for command in shell_commands(instruction.arguments)]
        position = 0
        for command in wanted:
            while position < len(ran) and ran[position][0] != command[0]:
                position += 1
            self.assertLess(position, len(ran), f"the build stage does not run {' '.join(command)} (in README order)")
            got = ran[position]
            self.assertEqual(got[:len(command)], command, f"the build stage runs {got}, the README {command}")
            # Only CMake cache options may be added to the build script's command line.
            for extra in got[len(command):]:
                self.assertTrue(extra.startswith("-D"), f"unexpected argument {extra!r} to {command[0]}")
            position += 1

    def test_nothing_builds_outside_the_scripts(self):
        for name, _, instructions in self.stages:
            for instruction in instructions:
                if instruction.keyword != "RUN":
                    continue
                for command in shell_commands(instruction.arguments):
                    program = os.path.basename(command[0])
                    self.assertNotIn(program, FORBIDDEN_BUILD_COMMANDS, f"{instruction} builds outside the scripts")
                    if command[0] == "xargs":
                        # xargs [options] program ...: the program it runs.
                        programs = [word for word in command[1:] if not word.startswith("-") and "/" not in word]
                        self.assertFalse(set(programs[:1]) & FORBIDDEN_BUILD_COMMANDS, str(instruction))

    def test_scripts_it_runs_exist_and_are_executable(self):
        for _, _, instructions in self.stages:
            for instruction in instructions:
                if instruction.keyword != "RUN":
                    continue
                for command in shell_commands(instruction.arguments):
                    script = normalize_script(command[0])
                    if script.startswith("scripts/"):
                        path = os.path.join(REPO, script)
                        self.assertTrue(os.path.isfile(path), f"{instruction}: {script} does not exist")
                        self.assertTrue(os.access(path, os.X_OK), f"{script} is not executable")

    def test_every_copied_path_exists_in_the_repository(self):
        ignored = []
        dockerignore = os.path.join(REPO, ".dockerignore")
        if os.path.exists(dockerignore):
            ignored = [line.strip().rstrip("/") for line in read(dockerignore).splitlines()
                       if line.strip() and not line.startswith("#")]
        stage_names = {name for name, _, _ in self.stages}
        copies = 0
        for instruction in self.instructions:
            if instruction.keyword == "ADD":
                self.fail(f"{instruction}: use COPY (ADD fetches URLs and unpacks archives)")
            if instruction.keyword != "COPY":
                continue
            words = instruction.arguments.split()
            options = [word for word in words if word.startswith("--")]
            paths = [word for word in words if not word.startswith("--")]
            self.assertGreaterEqual(len(paths), 2, str(instruction))
            from_stage = [option.split("=", 1)[1] for option in options if option.startswith("--from=")]
            if from_stage:
                self.assertIn(from_stage[0], stage_names, f"{instruction}: no stage named {from_stage[0]}")
                continue
            for source in paths[:-1]:
                copies += 1
                relative = os.path.normpath(source)
                self.assertFalse(os.path.isabs(source), f"{instruction}: {source} is absolute")
                self.assertTrue(os.path.exists(os.path.join(REPO, relative)),
                                f"{instruction}: {source} does not exist in the repository")
                for pattern in ignored:
                    self.assertFalse(fnmatch.fnmatch(relative, pattern) or relative == pattern,
                                     f"{instruction}: .dockerignore keeps {source} out of the build context")
        self.assertGreater(copies, 0)

    def test_build_stage_copies_every_source_folder_cmake_builds(self):
        top = read(os.path.join(REPO, "CMakeLists.txt"))
        folders = re.findall(r"^add_subdirectory\((\w+)\)", top, re.M)
        copied = set()
        build_arguments = ""
        for instruction in self.build_stage()[2]:
            if instruction.keyword == "COPY" and "--from" not in instruction.arguments:
                copied.update(os.path.normpath(word) for word in instruction.arguments.split()[:-1])
            if instruction.keyword == "RUN":
                build_arguments += instruction.arguments
        self.assertIn("CMakeLists.txt", copied)
        self.assertIn("scripts", copied)
        for folder in folders:
            if folder == "tests":
                continue
            self.assertIn(folder, copied, f"CMakeLists.txt builds {folder}/, which the build stage does not copy")
        if "tests" not in copied:
            self.assertIn("-DZOOGATE_BUILD_TESTS=OFF", build_arguments, "tests/ is not copied, so tests must be off")

    def test_runtime_stage_runs_as_a_numeric_non_root_user(self):
        users = [instruction for instruction in self.final_stage()[2] if instruction.keyword == "USER"]
        self.assertTrue(users, "the runtime stage sets no USER, so it runs as root")
        user, _, group = users[-1].arguments.partition(":")
        self.assertRegex(user, r"^\d+$", "a numeric user lets Kubernetes' runAsNonRoot check it")
        self.assertNotEqual(int(user), 0, "the runtime user is root")
        if group:
            self.assertNotEqual(int(group), 0, "the runtime group is root")
        self.assertNotIn(user, ("root",))

    def test_runtime_packages_come_from_the_executable(self):
        build_runs = " ".join(i.arguments for i in self.build_stage()[2] if i.keyword == "RUN")
        self.assertIn("scripts/runtime-packages.sh build/proxy/zoogate", build_runs)
        runtime_runs = " ".join(i.arguments for i in self.final_stage()[2] if i.keyword == "RUN")
        self.assertIn("runtime-packages.txt", runtime_runs)
        self.assertIn("--no-install-recommends", runtime_runs)
        for package in ("ca-certificates", "curl"):
            self.assertIn(package, runtime_runs)
        self.assertIn("rm -rf /var/lib/apt/lists/*", runtime_runs)

    def test_entrypoint_serves_the_mounted_configuration(self):
        entrypoints = [i for i in self.final_stage()[2] if i.keyword == "ENTRYPOINT"]
        self.assertTrue(entrypoints)
        command = exec_form(entrypoints[-1].arguments)
        self.assertEqual(os.path.basename(command[0]), "zoogate")
        self.assertEqual(command[1:], ["serve", "--config", "/etc/zoogate/zoogate.yaml"])
        copies = [i.arguments.split() for i in self.final_stage()[2] if i.keyword == "COPY"]
        self.assertIn(["--from=build", "/src/build/proxy/zoogate", command[0]], copies)
        self.assertIn([os.path.relpath(IMAGE_CONFIG_FILE, REPO), "/etc/zoogate/zoogate.yaml"], copies)

    def listen_port(self, key):
        return int(str(self.image_config[key]).rsplit(":", 1)[1])

    def test_image_configuration_listens_on_the_exposed_ports(self):
        self.assertTrue(str(self.image_config["listen"]).startswith("0.0.0.0:"))
        self.assertTrue(str(self.image_config["admin_listen"]).startswith("0.0.0.0:"))
        exposed = set()
        for instruction in self.final_stage()[2]:
            if instruction.keyword == "EXPOSE":
                exposed.update(int(port.split("/")[0]) for port in instruction.arguments.split())
        self.assertEqual(exposed, {self.listen_port("listen"), self.listen_port("admin_listen"), 3128})

    def test_health_check_hits_the_admin_healthz(self):
        checks = [i for i in self.final_stage()[2] if i.keyword == "HEALTHCHECK"]
        self.assertEqual(len(checks), 1)
        arguments = checks[0].arguments
        self.assertIn("CMD", arguments)
        command = exec_form(arguments.split("CMD", 1)[1].strip())
        self.assertEqual(command[0], "curl")
        self.assertIn("--fail", command)
        self.assertIn(f"http://127.0.0.1:{self.listen_port('admin_listen')}/healthz", command)

    def test_read_only_root_filesystem(self):
        """zoogate writes only to the cache folder, a volume, which is also its working folder."""
        volumes = set()
        for instruction in self.final_stage()[2]:
            if instruction.keyword == "VOLUME":
                volumes.update(exec_form(instruction.arguments))
        self.assertEqual(volumes, {"/var/cache/zoogate", "/etc/zoogate"})
        self.assertEqual(self.image_config["cache"]["dir"], "/var/cache/zoogate")
        workdirs = [i.arguments for i in self.final_stage()[2] if i.keyword == "WORKDIR"]
        self.assertEqual(workdirs[-1], "/var/cache/zoogate")
        log = self.image_config.get("logging", {}).get("access_log", "-")
        self.assertEqual(log, "-", "the access log goes to stderr, not to a file on the root filesystem")
        for key in ("secret_file", "signing_key_file"):
            path = self.image_config.get("mtd", {}).get(key, "")
            self.assertTrue(path == "" or path.startswith(("/var/cache/zoogate/", "/etc/zoogate/")), key)


class RuntimePackagesTest(unittest.TestCase):
    def test_runtime_packages_of_zoogate(self):
        script = os.path.join(REPO, "scripts", "runtime-packages.sh")
        result = run([script, zoogate_bin()])
        self.assertEqual(result.returncode, 0, result.stderr)
        packages = result.stdout.split()
        self.assertTrue(packages, "no packages listed")
        self.assertEqual(packages, sorted(set(packages)))
        for package in packages:
            self.assertFalse(package.endswith("-dev"), f"{package} is a development package")
            status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
            self.assertIn("install ok installed", status.stdout, package)
        # zoogate uses OpenSSL and the C++ runtime.
        self.assertIn("libssl3", packages)
        self.assertIn("libstdc++6", packages)

    def test_usage_error(self):
        script = os.path.join(REPO, "scripts", "runtime-packages.sh")
        self.assertEqual(run([script]).returncode, 2)
        self.assertEqual(run([script, "/nonexistent/zoogate"]).returncode, 2)


if __name__ == "__main__":
    unittest.main()
