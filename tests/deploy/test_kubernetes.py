"""The Kubernetes manifests (deploy/kubernetes/base), read with PyYAML, without kustomize or a cluster.

- KustomizeBaseTest: the kustomization names files that exist (and every manifest is named); each
  resource is well formed; the Deployment's probes hit the admin listener's /healthz and /readyz;
  the security context is locked down (non-root, read-only root filesystem, no capabilities,
  seccomp RuntimeDefault); selectors, ports, volumes and names agree across the Service,
  HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy, ServiceMonitor, ConfigMap, Secrets and
  PersistentVolumeClaim, and with the image (Dockerfile user and entrypoint); the ConfigMap's
  zoogate.yaml parses and points at the mounted keys; the Secrets hold placeholders only.
- ZoogateConfigCheckTest (needs ZOOGATE_BIN): `zoogate config check` accepts the ConfigMap's
  zoogate.yaml (as shipped and with its egress block switched on) and the image's default
  configuration, with the pod's mounts laid out in a temporary folder; `zoogate serve` refuses to
  start with the Secrets' placeholders.
"""
import os
import re
import signal
import subprocess
import unittest

import yaml

from deploy_support import (DOCKERFILE, IMAGE_CONFIG_FILE, KUSTOMIZE_BASE, REPO, load_yaml_documents, make_workdir,
                            read, run, zoogate_bin)

# The top-level keys of zoogate's server configuration (docs/configuration.md).
SERVER_CONFIG_KEYS = {"listen", "admin_listen", "public_url", "trusted_proxies", "trusted_user_header", "io_threads",
                      "worker_threads", "upstream", "cache", "pipeline", "mtd", "policy_file", "limits", "logging",
                      "egress"}
ETC = "/etc/zoogate"
CACHE = "/var/cache/zoogate"


def kustomization():
    return yaml.safe_load(read(os.path.join(KUSTOMIZE_BASE, "kustomization.yaml")))


def base_resources():
    """{(kind, name): resource} of every document the kustomization names."""
    resources = {}
    for entry in kustomization()["resources"]:
        for document in load_yaml_documents(os.path.join(KUSTOMIZE_BASE, entry)):
            key = (document["kind"], document["metadata"]["name"])
            if key in resources:
                raise AssertionError(f"{key} is defined twice")
            resources[key] = document
    return resources


def configmap_text(resources, uncomment_egress=False):
    """The ConfigMap's zoogate.yaml; with uncomment_egress, its commented egress example switched on."""
    text = resources[("ConfigMap", "zoogate-config")]["data"]["zoogate.yaml"]
    if not uncomment_egress:
        return text
    lines = text.splitlines()
    start = lines.index("# egress:")
    switched = lines[:start]
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        switched.append(line[2:])
    return "\n".join(switched) + "\n"


def port_of(address):
    return int(str(address).rsplit(":", 1)[1])


class KustomizeBaseTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.resources = base_resources()
        cls.deployment = cls.resources[("Deployment", "zoogate")]
        cls.pod = cls.deployment["spec"]["template"]["spec"]
        cls.container = next(c for c in cls.pod["containers"] if c["name"] == "zoogate")
        cls.config = yaml.safe_load(configmap_text(cls.resources))

    def of_kind(self, kind):
        return [resource for (k, _), resource in self.resources.items() if k == kind]

    def container_port(self, port):
        """A container port given by name or number, as a number."""
        if isinstance(port, int):
            return port
        for entry in self.container["ports"]:
            if entry["name"] == port:
                return entry["containerPort"]
        self.fail(f"the container has no port named {port}")

    def pod_labels(self):
        return self.deployment["spec"]["template"]["metadata"]["labels"]

    def assertSelects(self, selector, what):
        labels = self.pod_labels()
        for key, value in selector.items():
            self.assertEqual(labels.get(key), value, f"{what} selects {key}={value}, which the pods lack")

    # The kustomization -----------------------------------------------------------------------

    def test_every_resource_of_the_kustomization_exists(self):
        entries = kustomization()["resources"]
        self.assertEqual(len(entries), len(set(entries)))
        for entry in entries:
            path = os.path.join(KUSTOMIZE_BASE, entry)
            self.assertTrue(os.path.isfile(path) or os.path.isfile(os.path.join(path, "kustomization.yaml")),
                            f"kustomization.yaml names {entry}, which does not exist")

    def test_every_manifest_is_in_the_kustomization(self):
        entries = set(kustomization()["resources"])
        for name in os.listdir(KUSTOMIZE_BASE):
            if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml":
                self.assertIn(name, entries, f"{name} is not listed in kustomization.yaml")

    def test_the_required_kinds_are_there(self):
        kinds = {kind for kind, _ in self.resources}
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret",
                     "NetworkPolicy", "ServiceMonitor", "PersistentVolumeClaim"):
            self.assertIn(kind, kinds)
        for (kind, name), resource in self.resources.items():
            self.assertIn("apiVersion", resource, f"{kind}/{name}")
            self.assertRegex(name, r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", f"{kind}/{name}")
            self.assertNotIn("namespace", resource["metadata"], f"{kind}/{name}: overlays set the namespace")

    def test_the_image_is_set_by_the_kustomization(self):
        images = {image["name"] for image in kustomization().get("images", [])}
        self.assertIn(self.container["image"].split(":")[0], images)

    # Probes, ports, entrypoint ---------------------------------------------------------------

    def test_probes_hit_the_admin_listener(self):
        admin = port_of(self.config["admin_listen"])
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            http = self.container[probe]["httpGet"]
            self.assertEqual(http["path"], path, probe)
            self.assertEqual(self.container_port(http["port"]), admin, f"{probe} must hit the admin listener")

    def test_container_ports_match_the_configuration(self):
        ports = {entry["name"]: entry["containerPort"] for entry in self.container["ports"]}
        self.assertEqual(ports["hub"], port_of(self.config["listen"]))
        self.assertEqual(ports["admin"], port_of(self.config["admin_listen"]))
        self.assertEqual(ports["egress"], 3128)
        self.assertTrue(str(self.config["listen"]).startswith("0.0.0.0:"))
        self.assertTrue(str(self.config["admin_listen"]).startswith("0.0.0.0:"))

    def test_the_image_entrypoint_reads_the_mounted_configuration(self):
        self.assertNotIn("command", self.container, "the image's entrypoint runs zoogate serve")
        self.assertIn('"--config", "/etc/zoogate/zoogate.yaml"', read(DOCKERFILE))
        mounts = {m["mountPath"]: m for m in self.container["volumeMounts"]}
        volume = self.volume(mounts[ETC]["name"])
        paths = self.projected_paths(volume)
        self.assertEqual(paths["zoogate.yaml"], ("configMap", "zoogate-config", "zoogate.yaml"))

    def test_resources_are_set(self):
        resources = self.container["resources"]
        for section in ("requests", "limits"):
            for key in ("cpu", "memory"):
                self.assertIn(key, resources[section], f"resources.{section}.{key}")

    # Security --------------------------------------------------------------------------------

    def test_pod_security_context(self):
        context = self.pod["securityContext"]
        self.assertIs(context["runAsNonRoot"], True)
        self.assertNotEqual(context["runAsUser"], 0)
        self.assertEqual(context["seccompProfile"]["type"], "RuntimeDefault")
        self.assertIs(self.pod.get("automountServiceAccountToken"), False, "zoogate needs no API access")
        self.assertFalse(self.pod.get("hostNetwork", False))

    def test_container_security_context(self):
        context = self.container["securityContext"]
        self.assertIs(context["runAsNonRoot"], True)
        self.assertIs(context["readOnlyRootFilesystem"], True)
        self.assertIs(context["allowPrivilegeEscalation"], False)
        self.assertFalse(context.get("privileged", False))
        self.assertEqual(context["capabilities"]["drop"], ["ALL"])
        self.assertNotIn("add", context["capabilities"])
        self.assertEqual(context["seccompProfile"]["type"], "RuntimeDefault")

    def test_the_user_is_the_image_user(self):
        users = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", read(DOCKERFILE), re.M)
        self.assertTrue(users)
        user, group = users[-1]
        for context in (self.pod["securityContext"], self.container["securityContext"]):
            self.assertEqual(context["runAsUser"], int(user))
            if group:
                self.assertEqual(context["runAsGroup"], int(group))

    def test_only_the_cache_and_tmp_are_writable(self):
        writable = {m["mountPath"] for m in self.container["volumeMounts"] if not m.get("readOnly", False)}
        self.assertEqual(writable, {CACHE, "/tmp"})
        image = yaml.safe_load(read(IMAGE_CONFIG_FILE))
        self.assertEqual(self.config["cache"]["dir"], CACHE)
        self.assertEqual(image["cache"]["dir"], CACHE)
        self.assertEqual(self.config["logging"]["access_log"], "-")

    def test_drain_fits_the_grace_period(self):
        # zoogate drains for up to 30 s after SIGTERM (proxy/server.cc), after the preStop pause.
        pause = int(self.container["lifecycle"]["preStop"]["exec"]["command"][-1])
        self.assertGreater(self.pod["terminationGracePeriodSeconds"], pause + 30)

    # Volumes, keys, configuration --------------------------------------------------------------

    def volume(self, name):
        for volume in self.pod["volumes"]:
            if volume["name"] == name:
                return volume
        self.fail(f"no volume {name}")

    def projected_paths(self, volume):
        """{path inside the mount: (kind, object name, key)} of a projected volume."""
        paths = {}
        for source in volume["projected"]["sources"]:
            for kind in ("configMap", "secret"):
                if kind in source:
                    for item in source[kind]["items"]:
                        paths[item["path"]] = (kind, source[kind]["name"], item["key"])
        return paths

    def test_every_mount_has_its_volume(self):
        names = {volume["name"] for volume in self.pod["volumes"]}
        for mount in self.container["volumeMounts"]:
            self.assertIn(mount["name"], names)

    def test_the_cache_is_the_shared_claim(self):
        mounts = {m["mountPath"]: m["name"] for m in self.container["volumeMounts"]}
        claim = self.volume(mounts[CACHE])["persistentVolumeClaim"]["claimName"]
        pvc = self.resources[("PersistentVolumeClaim", claim)]
        self.assertEqual(pvc["spec"]["accessModes"], ["ReadWriteMany"], "replicas share the cache volume")
        self.assertIn("storage", pvc["spec"]["resources"]["requests"])

    def test_projected_objects_and_keys_exist(self):
        mounts = {m["mountPath"]: m["name"] for m in self.container["volumeMounts"]}
        for path, (kind, name, key) in self.projected_paths(self.volume(mounts[ETC])).items():
            resource = self.resources.get(("ConfigMap" if kind == "configMap" else "Secret", name))
            self.assertIsNotNone(resource, f"{ETC}/{path} comes from {kind} {name}, which the base lacks")
            data = {**resource.get("data", {}), **resource.get("stringData", {})}
            self.assertIn(key, data, f"{kind} {name} has no key {key}")

    def test_configuration_names_the_mounted_keys(self):
        mounts = {m["mountPath"]: m["name"] for m in self.container["volumeMounts"]}
        provided = {f"{ETC}/{path}" for path in self.projected_paths(self.volume(mounts[ETC]))}
        for key in ("secret_file", "signing_key_file"):
            self.assertIn(self.config["mtd"][key], provided, f"mtd.{key} is not a file the pod mounts")
        egress = yaml.safe_load(configmap_text(self.resources, uncomment_egress=True))["egress"]
        self.assertEqual(port_of(egress["listen"]), self.container_port("egress"))
        for key in ("ca_cert", "ca_key"):
            self.assertIn(egress[key], provided, f"egress.{key} is not a file the pod mounts")

    def test_configmap_zoogate_yaml_parses(self):
        self.assertIsInstance(self.config, dict)
        unknown = set(self.config) - SERVER_CONFIG_KEYS
        self.assertFalse(unknown, f"unknown keys in the ConfigMap's zoogate.yaml: {unknown}")
        self.assertNotIn("egress", self.config, "egress stays off until a real CA is provided")

    def test_secrets_are_placeholders(self):
        secrets = self.of_kind("Secret")
        self.assertEqual({s["metadata"]["name"] for s in secrets},
                         {"zoogate-mtd-secret", "zoogate-signing-key", "zoogate-ca"})
        for secret in secrets:
            self.assertNotIn("data", secret, "templates carry stringData placeholders, never encoded keys")
            for key, value in secret["stringData"].items():
                self.assertIn("REPLACE-ME", value, f"{secret['metadata']['name']}/{key} is not a placeholder")
                self.assertNotIn("BEGIN", value)
        # Too short to be accepted as a variation secret (zoogate wants at least 32 bytes): fail closed.
        mtd = self.resources[("Secret", "zoogate-mtd-secret")]["stringData"]["mtd-secret"]
        self.assertLess(len(mtd.encode()), 32)

    def test_no_private_key_anywhere_in_deploy(self):
        for folder, _, files in os.walk(os.path.join(REPO, "deploy")):
            for name in files:
                text = read(os.path.join(folder, name))
                self.assertNotRegex(text, r"-----BEGIN [A-Z ]*PRIVATE KEY-----", f"{name} holds a private key")

    # The other resources ---------------------------------------------------------------------

    def test_service(self):
        service = self.resources[("Service", "zoogate")]
        self.assertSelects(service["spec"]["selector"], "the Service")
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        self.assertEqual(set(ports), {"hub", "egress", "admin"})
        for port in ports.values():
            self.container_port(port["targetPort"])

    def test_deployment_selector_matches_its_pods(self):
        self.assertSelects(self.deployment["spec"]["selector"]["matchLabels"], "the Deployment")

    def test_autoscaler(self):
        hpa = self.resources[("HorizontalPodAutoscaler", "zoogate")]
        target = hpa["spec"]["scaleTargetRef"]
        self.assertEqual((target["kind"], target["name"]), ("Deployment", "zoogate"))
        self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2)
        self.assertGreater(hpa["spec"]["maxReplicas"], hpa["spec"]["minReplicas"])
        self.assertIn("requests", self.container["resources"], "CPU utilization is relative to the request")

    def test_disruption_budget(self):
        pdb = self.resources[("PodDisruptionBudget", "zoogate")]
        self.assertSelects(pdb["spec"]["selector"]["matchLabels"], "the PodDisruptionBudget")
        hpa = self.resources[("HorizontalPodAutoscaler", "zoogate")]
        self.assertLess(pdb["spec"]["maxUnavailable"], hpa["spec"]["minReplicas"], "one replica stays up")

    def test_service_monitor_scrapes_the_admin_port(self):
        monitor = self.resources[("ServiceMonitor", "zoogate")]
        service = self.resources[("Service", "zoogate")]
        service_labels = service["metadata"].get("labels", {})
        service_labels = {**service_labels, **kustomization()["labels"][0]["pairs"]}
        for key, value in monitor["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(service_labels.get(key), value)
        endpoint = monitor["spec"]["endpoints"][0]
        self.assertEqual(endpoint["path"], "/metrics")
        port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
        self.assertEqual(self.container_port(port["targetPort"]), port_of(self.config["admin_listen"]))

    def test_network_policy(self):
        policy = self.resources[("NetworkPolicy", "zoogate")]
        spec = policy["spec"]
        self.assertSelects(spec["podSelector"]["matchLabels"], "the NetworkPolicy")
        self.assertEqual(set(spec["policyTypes"]), {"Ingress", "Egress"})
        admin = port_of(self.config["admin_listen"])
        for rule in spec["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            peers = [peer["namespaceSelector"]["matchLabels"] for peer in rule["from"]]
            if admin in ports:
                self.assertEqual(ports, {admin}, "the admin port has its own rule")
                self.assertEqual(peers, [{"kubernetes.io/metadata.name": "monitoring"}])
            else:
                self.assertEqual(ports, {port_of(self.config["listen"]), 3128})
                self.assertEqual(peers, [{"zoogate-client": "true"}])
        egress_ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
        self.assertEqual(egress_ports, {(53, "UDP"), (53, "TCP"), (443, "TCP")})
        for rule in spec["egress"]:
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    self.assertIn("except", peer["ipBlock"], "private ranges stay unreachable")


# ---------------------------------------------------------------------------------------------
# With the real zoogate


def pod_layout(workdir, text):
    """The configuration with the pod's mount points moved into `workdir`, and those folders made."""
    etc = os.path.join(workdir, "etc")
    cache = os.path.join(workdir, "cache")
    for folder in (etc, os.path.join(etc, "keys"), os.path.join(etc, "ca"), cache):
        os.makedirs(folder, exist_ok=True)
    return text.replace(ETC + "/", etc + "/").replace(CACHE, cache), etc


class ZoogateConfigCheckTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.binary = zoogate_bin()
        cls.resources = base_resources()

    def provide_keys(self, etc):
        """Real keys where the Secrets would be mounted: as an operator creates them."""
        with open(os.path.join(etc, "keys", "mtd-secret"), "wb") as handle:
            handle.write(os.urandom(32))
        keygen = run([self.binary, "keygen", "--private", os.path.join(etc, "keys", "signing-key.pem"),
                      "--public", os.path.join(etc, "keys", "signing-key.pub.pem")])
        self.assertEqual(keygen.returncode, 0, keygen.stderr)
        ca = run([self.binary, "ca", "init", "--cert", os.path.join(etc, "ca", "ca.pem"),
                  "--key", os.path.join(etc, "ca", "ca.key")])
        self.assertEqual(ca.returncode, 0, ca.stderr)

    def check(self, text, name):
        workdir = make_workdir("config-check")
        text, etc = pod_layout(workdir, text)
        self.provide_keys(etc)
        path = os.path.join(workdir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        result = run([self.binary, "config", "check", path], cwd=workdir)
        self.assertEqual(result.returncode, 0, f"zoogate config check {name}: {result.stderr}")

    def test_configmap_configuration(self):
        self.check(configmap_text(self.resources), "configmap-zoogate.yaml")

    def test_configmap_configuration_with_egress(self):
        self.check(configmap_text(self.resources, uncomment_egress=True), "configmap-egress-zoogate.yaml")

    def test_image_configuration(self):
        self.check(read(IMAGE_CONFIG_FILE), "image-zoogate.yaml")

    def serve_refuses(self, placeholder_key):
        """zoogate serve with the ConfigMap's configuration, real keys except one that holds the
        Secret template's placeholder: it must exit with an error and never start listening."""
        workdir = make_workdir("placeholder")
        text, etc = pod_layout(workdir, configmap_text(self.resources))
        text = text.replace('"0.0.0.0:8080"', '"127.0.0.1:0"').replace('"0.0.0.0:9090"', '"127.0.0.1:0"')
        self.provide_keys(etc)
        secret_name, key, file_name = placeholder_key
        placeholder = self.resources[("Secret", secret_name)]["stringData"][key]
        with open(os.path.join(etc, "keys", file_name), "w", encoding="utf-8") as handle:
            handle.write(placeholder)
        path = os.path.join(workdir, "zoogate.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        process = subprocess.Popen([self.binary, "serve", "--config", path], cwd=workdir,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            stdout, stderr = process.communicate()
            self.fail(f"zoogate kept running with the placeholder {secret_name}/{key}")
        self.assertNotEqual(process.returncode, 0, f"zoogate accepted the placeholder {secret_name}/{key}")
        self.assertNotIn("serving the Hub", stdout)
        self.assertIn(file_name, stderr, "the error names the file")

    def test_serve_refuses_the_mtd_secret_placeholder(self):
        self.serve_refuses(("zoogate-mtd-secret", "mtd-secret", "mtd-secret"))

    def test_serve_refuses_the_signing_key_placeholder(self):
        self.serve_refuses(("zoogate-signing-key", "signing-key.pem", "signing-key.pem"))


if __name__ == "__main__":
    unittest.main()
