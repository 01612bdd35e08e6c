"""MTD variation end to end in PyTorch.

LayoutVariation: twenty seeds give twenty different files, each of which loads with
torch.load(weights_only=True) equal to the original (keys, dtypes, shapes, strides, values and
storage sharing), and one seed always gives the same bytes.

WeightVariation: tiny GPT-2, BERT and Llama models (random weights under the real key names and
shapes, forward passes written here in plain PyTorch) compute the same outputs on random probe inputs
after weight variation, within 1e-5 relative error in fp32, although their weights changed.

Trace: a variant made for one of fifty scope/epoch pairs is attributed to exactly that pair, and an
unrelated file to none.

CTest runs this under Debian's Python (torch 1.13) with ZOOGATE_BIN set to the zoogate binary.
"""
import collections
import hashlib
import json
import math
import os
import subprocess
import tempfile
import unittest
import zipfile

import torch
import torch.nn.functional as F

ZOOGATE = os.environ.get("ZOOGATE_BIN", "")
RELATIVE_TOLERANCE = 1e-5


class Workspace:
    """A temporary folder with a variation secret, and the helper that sanitizes into it."""

    def __init__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="zoogate-mtd-")
        self.secret = self.path("secret")
        with open(self.secret, "wb") as out:
            out.write(bytes(range(32)))

    def path(self, name):
        return os.path.join(self._folder.name, name)

    def save(self, name, value, config=None):
        torch.save(value, self.path(name))
        if config is not None:
            with open(self.path(name + ".json"), "w") as out:
                json.dump(config, out)
        return self.path(name)

    def vary(self, source, output, scope="client", epoch=1, weights=False, config_path=None):
        command = [ZOOGATE, "sanitize", source, "-o", self.path(output), "--json", "--mtd-secret", self.secret,
                   "--mtd-scope", scope, "--mtd-epoch", str(epoch)]
        if weights:
            command.append("--mtd-weights")
        if config_path:
            command += ["--model-config", config_path]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {run.returncode}: {run.stderr}{run.stdout}")
        return self.path(output), json.loads(run.stdout)

    def close(self):
        self._folder.cleanup()


def load(path):
    return torch.load(path, weights_only=True)


def sha256(path):
    with open(path, "rb") as data:
        return hashlib.sha256(data.read()).hexdigest()


def compare_values(test, original, loaded, where="root", tensors=None):
    """Asserts that two loaded checkpoints are equal in structure and content; collects tensor pairs."""
    tensors = [] if tensors is None else tensors
    test.assertIs(type(loaded), type(original), where)
    if isinstance(original, dict):
        test.assertEqual(list(loaded.keys()), list(original.keys()), where)
        for key in original:
            compare_values(test, original[key], loaded[key], f"{where}[{key!r}]", tensors)
    elif isinstance(original, (list, tuple)):
        test.assertEqual(len(loaded), len(original), where)
        for index, (a, b) in enumerate(zip(original, loaded)):
            compare_values(test, a, b, f"{where}[{index}]", tensors)
    elif torch.is_tensor(original):
        test.assertEqual(loaded.dtype, original.dtype, where)
        test.assertEqual(loaded.shape, original.shape, where)
        test.assertEqual(loaded.stride(), original.stride(), where)
        test.assertEqual(loaded.storage_offset(), original.storage_offset(), where)
        test.assertEqual(loaded.requires_grad, original.requires_grad, where)
        test.assertTrue(torch.equal(loaded, original), where)
        tensors.append((original, loaded))
    else:
        test.assertEqual(loaded, original, where)
    return tensors


def sharing_pattern(tensors):
    """For each tensor, the index of the first tensor over the same storage."""
    first = {}
    return [first.setdefault(tensor.storage().data_ptr(), index) for index, tensor in enumerate(tensors)]


def relative_error(reference, other):
    return ((reference - other).abs().max() / reference.abs().max()).item()


class LayoutVariation(unittest.TestCase):
    SEEDS = 20

    @classmethod
    def setUpClass(cls):
        cls.workspace = Workspace()
        torch.manual_seed(0)
        embedding = torch.randn(10, 4)
        linear = torch.nn.Linear(4, 3)
        state = collections.OrderedDict()
        state["embed.weight"] = embedding
        state["embed.rows"] = embedding[2:5]  # a view at an offset of the same storage
        state["linear.weight"] = linear.weight.data
        state["linear.weight_t"] = linear.weight.data.t()  # a transposed view
        state["linear.bias"] = linear.bias.data
        state["half"] = torch.randn(6).half()
        state["bfloat16"] = torch.randn(3, 2).bfloat16()
        state["steps"] = torch.arange(5, dtype=torch.int64)
        state["mask"] = torch.tensor([True, False, True])
        cls.checkpoint = {
            "model": state,
            "epoch": 3,
            "names": ["encoder", "decoder"],
            "parameter": torch.nn.Parameter(torch.randn(2, 2)),
            "buffers": [torch.randn(2) for _ in range(12)],
        }
        cls.source = cls.workspace.save("checkpoint.pt", cls.checkpoint)
        cls.variants = [cls.workspace.vary(cls.source, f"variant{seed}.pt", scope=f"client-{seed}")[0]
                        for seed in range(cls.SEEDS)]

    @classmethod
    def tearDownClass(cls):
        cls.workspace.close()

    def test_every_seed_gives_a_different_file(self):
        digests = {sha256(path) for path in self.variants}
        self.assertEqual(len(digests), self.SEEDS)
        folders = set()
        for path in self.variants:
            with zipfile.ZipFile(path) as archive:
                folders.add(archive.namelist()[0].split("/")[0])
        self.assertGreater(len(folders), 1, folders)

    def test_every_variant_loads_equal_to_the_original(self):
        original = load(self.source)
        for path in self.variants:
            with self.subTest(variant=os.path.basename(path)):
                loaded = load(path)
                pairs = compare_values(self, original, loaded)
                self.assertEqual(len(pairs), 22)
                self.assertEqual(sharing_pattern([a for a, _ in pairs]), sharing_pattern([b for _, b in pairs]))

    def test_the_same_seed_gives_the_same_bytes(self):
        again, _ = self.workspace.vary(self.source, "again.pt", scope="client-0")
        self.assertEqual(sha256(again), sha256(self.variants[0]))
        next_epoch, _ = self.workspace.vary(self.source, "next-epoch.pt", scope="client-0", epoch=2)
        self.assertNotEqual(sha256(next_epoch), sha256(self.variants[0]))

    def test_weight_variation_leaves_unrecognized_models_to_layout_variation(self):
        path, report = self.workspace.vary(self.source, "weights.pt", weights=True)
        self.assertIn("layout variation only", " ".join(report["notes"]))
        compare_values(self, load(self.source), load(path))


# --- Tiny models with the real key names and shapes -------------------------------------------------

def random_weights(shapes, scale=0.2):
    return collections.OrderedDict((name, torch.randn(*shape) * scale) for name, shape in shapes)


def gpt2_state(embed=32, heads=4, layers=2, vocab=50, positions=16):
    shapes = [("transformer.wte.weight", (vocab, embed)), ("transformer.wpe.weight", (positions, embed))]
    for layer in range(layers):
        prefix = f"transformer.h.{layer}."
        shapes += [(prefix + "ln_1.weight", (embed,)), (prefix + "ln_1.bias", (embed,)),
                   (prefix + "attn.c_attn.weight", (embed, 3 * embed)), (prefix + "attn.c_attn.bias", (3 * embed,)),
                   (prefix + "attn.c_proj.weight", (embed, embed)), (prefix + "attn.c_proj.bias", (embed,)),
                   (prefix + "ln_2.weight", (embed,)), (prefix + "ln_2.bias", (embed,)),
                   (prefix + "mlp.c_fc.weight", (embed, 4 * embed)), (prefix + "mlp.c_fc.bias", (4 * embed,)),
                   (prefix + "mlp.c_proj.weight", (4 * embed, embed)), (prefix + "mlp.c_proj.bias", (embed,))]
    shapes += [("transformer.ln_f.weight", (embed,)), ("transformer.ln_f.bias", (embed,))]
    state = random_weights(shapes)
    for layer in range(layers):
        prefix = f"transformer.h.{layer}."
        state[prefix + "ln_1.weight"] += 1
        state[prefix + "ln_2.weight"] += 1
        state[prefix + "attn.bias"] = torch.tril(torch.ones(positions, positions)).view(1, 1, positions, positions)
        state[prefix + "attn.masked_bias"] = torch.tensor(-1e4)
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied, as GPT-2 saves it
    return state


def gpt2_forward(state, ids, heads, layers):
    batch, length = ids.shape
    x = state["transformer.wte.weight"][ids] + state["transformer.wpe.weight"][:length]
    embed = x.shape[-1]
    head_dim = embed // heads

    def split_heads(t):
        return t.view(batch, length, heads, head_dim).transpose(1, 2)

    for layer in range(layers):
        p = f"transformer.h.{layer}."
        h = F.layer_norm(x, (embed,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        q, k, v = (h @ state[p + "attn.c_attn.weight"] + state[p + "attn.c_attn.bias"]).split(embed, dim=-1)
        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
        causal = state[p + "attn.bias"][:, :, :length, :length].bool()
        scores = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (scores @ v).transpose(1, 2).reshape(batch, length, embed)
        x = x + y @ state[p + "attn.c_proj.weight"] + state[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (embed,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        hidden = F.gelu(h @ state[p + "mlp.c_fc.weight"] + state[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + hidden @ state[p + "mlp.c_proj.weight"] + state[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (embed,), state["transformer.ln_f.weight"], state["transformer.ln_f.bias"])
    return x @ state["lm_head.weight"].t()


def bert_state(hidden=32, heads=4, intermediate=64, layers=2):
    shapes = []
    for layer in range(layers):
        prefix = f"bert.encoder.layer.{layer}."
        for part in ("query", "key", "value"):
            shapes += [(f"{prefix}attention.self.{part}.weight", (hidden, hidden)),
                       (f"{prefix}attention.self.{part}.bias", (hidden,))]
        shapes += [(prefix + "attention.output.dense.weight", (hidden, hidden)),
                   (prefix + "attention.output.dense.bias", (hidden,)),
                   (prefix + "attention.output.LayerNorm.weight", (hidden,)),
                   (prefix + "attention.output.LayerNorm.bias", (hidden,)),
                   (prefix + "intermediate.dense.weight", (intermediate, hidden)),
                   (prefix + "intermediate.dense.bias", (intermediate,)),
                   (prefix + "output.dense.weight", (hidden, intermediate)),
                   (prefix + "output.dense.bias", (hidden,)),
                   (prefix + "output.LayerNorm.weight", (hidden,)),
                   (prefix + "output.LayerNorm.bias", (hidden,))]
    shapes += [("bert.pooler.dense.weight", (hidden, hidden)), ("bert.pooler.dense.bias", (hidden,))]
    return random_weights(shapes)


def bert_forward(state, x, heads, layers):
    batch, length, hidden = x.shape
    head_dim = hidden // heads

    def linear(t, name):
        return F.linear(t, state[name + ".weight"], state[name + ".bias"])

    def split_heads(t):
        return t.view(batch, length, heads, head_dim).transpose(1, 2)

    for layer in range(layers):
        p = f"bert.encoder.layer.{layer}."
        q = split_heads(linear(x, p + "attention.self.query"))
        k = split_heads(linear(x, p + "attention.self.key"))
        v = split_heads(linear(x, p + "attention.self.value"))
        scores = (q @ k.transpose(-2, -1) / math.sqrt(head_dim)).softmax(dim=-1)
        context = (scores @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = F.layer_norm(linear(context, p + "attention.output.dense") + x, (hidden,),
                         state[p + "attention.output.LayerNorm.weight"], state[p + "attention.output.LayerNorm.bias"])
        inner = F.gelu(linear(x, p + "intermediate.dense"))
        x = F.layer_norm(linear(inner, p + "output.dense") + x, (hidden,),
                         state[p + "output.LayerNorm.weight"], state[p + "output.LayerNorm.bias"])
    return torch.tanh(linear(x[:, 0], "bert.pooler.dense")), x


def llama_state(hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=64, layers=2, vocab=50,
                biases=False, qk_norm=False):
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        shapes += [(prefix + "self_attn.q_proj.weight", (heads * head_dim, hidden)),
                   (prefix + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
                   (prefix + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
                   (prefix + "self_attn.o_proj.weight", (hidden, heads * head_dim)),
                   (prefix + "mlp.gate_proj.weight", (intermediate, hidden)),
                   (prefix + "mlp.up_proj.weight", (intermediate, hidden)),
                   (prefix + "mlp.down_proj.weight", (hidden, intermediate))]
        if biases:
            shapes += [(prefix + "self_attn.q_proj.bias", (heads * head_dim,)),
                       (prefix + "self_attn.k_proj.bias", (kv_heads * head_dim,)),
                       (prefix + "self_attn.v_proj.bias", (kv_heads * head_dim,))]
    shapes += [("lm_head.weight", (vocab, hidden))]
    state = random_weights(shapes)
    norms = ["model.norm.weight"]
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        norms += [prefix + "input_layernorm.weight", prefix + "post_attention_layernorm.weight"]
        if qk_norm:
            state[prefix + "self_attn.q_norm.weight"] = 1 + 0.1 * torch.randn(head_dim)
            state[prefix + "self_attn.k_norm.weight"] = 1 + 0.1 * torch.randn(head_dim)
    for name in norms:
        state[name] = 1 + 0.1 * torch.randn(hidden)
    return state


def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def llama_forward(state, ids, heads, kv_heads, head_dim, layers, theta=10000.0):
    batch, length = ids.shape
    x = state["model.embed_tokens.weight"][ids]
    inverse_frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(length).float(), inverse_frequencies)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rotate_half(t):
        return torch.cat([-t[..., head_dim // 2:], t[..., :head_dim // 2]], dim=-1)

    def project(t, name, count):
        out = F.linear(t, state[name + ".weight"], state.get(name + ".bias"))
        return out.view(batch, length, count, head_dim).transpose(1, 2)

    causal = torch.ones(length, length).tril().bool()
    for layer in range(layers):
        p = f"model.layers.{layer}."
        h = rms_norm(x, state[p + "input_layernorm.weight"])
        q = project(h, p + "self_attn.q_proj", heads)
        k = project(h, p + "self_attn.k_proj", kv_heads)
        v = project(h, p + "self_attn.v_proj", kv_heads)
        if p + "self_attn.q_norm.weight" in state:
            q = rms_norm(q, state[p + "self_attn.q_norm.weight"])
            k = rms_norm(k, state[p + "self_attn.k_norm.weight"])
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        # repeat_kv: query head h reads key/value head h // (heads / kv_heads).
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(head_dim)).masked_fill(~causal, float("-inf")).softmax(-1)
        y = (scores @ v).transpose(1, 2).reshape(batch, length, heads * head_dim)
        x = x + F.linear(y, state[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, state[p + "post_attention_layernorm.weight"])
        gated = F.silu(F.linear(h, state[p + "mlp.gate_proj.weight"])) * F.linear(h, state[p + "mlp.up_proj.weight"])
        x = x + F.linear(gated, state[p + "mlp.down_proj.weight"])
    return F.linear(rms_norm(x, state["model.norm.weight"]), state["lm_head.weight"])


class WeightVariation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workspace = Workspace()

    @classmethod
    def tearDownClass(cls):
        cls.workspace.close()

    def vary(self, name, state, config, scope="client"):
        """Saves `state` (and config.json), varies it with weights on; returns (loaded state, notes)."""
        source = self.workspace.save(name, state, config)
        path, report = self.workspace.vary(source, name + ".varied", scope=scope, weights=True,
                                           config_path=source + ".json" if config is not None else None)
        self.assertEqual(report["verdict"], "clean", report)
        varied = load(path)
        self.assertEqual(list(varied.keys()), list(state.keys()))
        for key in state:
            self.assertEqual(varied[key].shape, state[key].shape, key)
            self.assertEqual(varied[key].dtype, state[key].dtype, key)
        return varied, report["notes"]

    def assert_changed(self, original, varied, names, changed=True):
        for name in names:
            with self.subTest(tensor=name):
                self.assertEqual(not torch.equal(original[name], varied[name]), changed)

    def assert_same_outputs(self, reference, varied):
        for a, b in zip(reference if isinstance(reference, tuple) else (reference,),
                        varied if isinstance(varied, tuple) else (varied,)):
            self.assertLess(relative_error(a, b), RELATIVE_TOLERANCE)

    def test_gpt2(self):
        torch.manual_seed(1)
        state = gpt2_state()
        varied, notes = self.vary("gpt2.pt", state, {"model_type": "gpt2", "n_head": 4, "n_embd": 32, "n_layer": 2})
        self.assertIn("weight variation (GPT-2): attention heads permuted in 2 of 2 layers", notes)
        self.assertIn("weight variation (GPT-2): FFN units permuted in 2 of 2 layers", notes)
        changed = [f"transformer.h.{layer}.{name}" for layer in range(2)
                   for name in ("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                                "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight")]
        self.assert_changed(state, varied, changed)
        self.assert_changed(state, varied, ["transformer.wte.weight", "transformer.h.0.attn.c_proj.bias",
                                            "transformer.h.0.mlp.c_proj.bias", "transformer.h.0.attn.bias"], False)
        ids = torch.randint(0, 50, (3, 12))
        with torch.no_grad():
            self.assert_same_outputs(gpt2_forward(state, ids, 4, 2), gpt2_forward(varied, ids, 4, 2))

    def test_bert(self):
        torch.manual_seed(2)
        state = bert_state()
        varied, notes = self.vary("bert.pt", state, {"model_type": "bert", "num_attention_heads": 4,
                                                     "hidden_size": 32, "intermediate_size": 64})
        self.assertIn("weight variation (BERT): attention heads permuted in 2 of 2 layers", notes)
        changed = [f"bert.encoder.layer.{layer}.{name}" for layer in range(2)
                   for name in ("attention.self.query.weight", "attention.self.key.bias",
                                "attention.output.dense.weight", "intermediate.dense.weight",
                                "output.dense.weight")]
        self.assert_changed(state, varied, changed)
        probe = torch.randn(3, 7, 32)
        with torch.no_grad():
            self.assert_same_outputs(bert_forward(state, probe, 4, 2), bert_forward(varied, probe, 4, 2))

    def test_llama_with_grouped_query_attention(self):
        torch.manual_seed(3)
        state = llama_state()
        config = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "intermediate_size": 64, "num_hidden_layers": 2}
        varied, notes = self.vary("llama.pt", state, config)
        self.assertIn("weight variation (Llama/Mistral/Qwen): attention heads permuted in 2 of 2 layers", notes)
        changed = [f"model.layers.{layer}.{name}" for layer in range(2)
                   for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
                                "mlp.up_proj.weight", "mlp.down_proj.weight")]
        self.assert_changed(state, varied, changed)
        ids = torch.randint(0, 50, (3, 12))
        with torch.no_grad():
            self.assert_same_outputs(llama_forward(state, ids, 4, 2, 8, 2), llama_forward(varied, ids, 4, 2, 8, 2))

    def test_qwen_biases_and_per_head_norms_without_config(self):
        # Without config.json, per-head q_norm/k_norm weights (Qwen3) give the head size.
        torch.manual_seed(4)
        state = llama_state(heads=8, kv_heads=2, head_dim=4, biases=True, qk_norm=True)
        varied, notes = self.vary("qwen.pt", state, None)
        self.assertIn("weight variation (Llama/Mistral/Qwen): attention heads permuted in 2 of 2 layers", notes)
        self.assert_changed(state, varied, ["model.layers.0.self_attn.q_proj.bias", "model.layers.1.mlp.up_proj.weight"])
        ids = torch.randint(0, 50, (2, 9))
        with torch.no_grad():
            self.assert_same_outputs(llama_forward(state, ids, 8, 2, 4, 2), llama_forward(varied, ids, 8, 2, 4, 2))

    def test_llama_without_config_permutes_ffn_units_only(self):
        torch.manual_seed(5)
        state = llama_state()
        varied, notes = self.vary("llama-no-config.pt", state, None)
        self.assertTrue(any("attention heads left as is in 2 layers" in note and "without config.json" in note
                            for note in notes), notes)
        self.assert_changed(state, varied, ["model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.down_proj.weight"])
        self.assert_changed(state, varied, ["model.layers.0.self_attn.q_proj.weight",
                                            "model.layers.1.self_attn.o_proj.weight"], False)
        ids = torch.randint(0, 50, (3, 12))
        with torch.no_grad():
            self.assert_same_outputs(llama_forward(state, ids, 4, 2, 8, 2), llama_forward(varied, ids, 4, 2, 8, 2))

    def test_a_layer_whose_weights_share_storage_is_left_alone(self):
        torch.manual_seed(6)
        state = llama_state()
        fused = torch.randn(128, 32) * 0.2  # layer 1's gate and up projections as views of one storage
        state["model.layers.1.mlp.gate_proj.weight"] = fused[:64]
        state["model.layers.1.mlp.up_proj.weight"] = fused[64:]
        config = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32}
        varied, notes = self.vary("llama-fused.pt", state, config)
        self.assertIn("weight variation (Llama/Mistral/Qwen): FFN units left as is in 1 layers (first "
                      "model.layers.1.): mlp.gate_proj.weight shares its storage with another tensor", notes)
        self.assert_changed(state, varied, ["model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.down_proj.weight"],
                            False)
        self.assert_changed(state, varied, ["model.layers.0.mlp.gate_proj.weight", "model.layers.1.self_attn.q_proj.weight"])
        self.assertEqual(varied["model.layers.1.mlp.gate_proj.weight"].storage().data_ptr(),
                         varied["model.layers.1.mlp.up_proj.weight"].storage().data_ptr())
        ids = torch.randint(0, 50, (3, 12))
        with torch.no_grad():
            self.assert_same_outputs(llama_forward(state, ids, 4, 2, 8, 2), llama_forward(varied, ids, 4, 2, 8, 2))

    def test_clients_get_different_permutations(self):
        torch.manual_seed(7)
        state = llama_state(layers=1)
        config = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32}
        first, _ = self.vary("llama-alice.pt", state, config, scope="alice")
        second, _ = self.vary("llama-bob.pt", state, config, scope="bob")
        self.assertFalse(torch.equal(first["model.layers.0.mlp.up_proj.weight"],
                                     second["model.layers.0.mlp.up_proj.weight"]))


class Trace(unittest.TestCase):
    """zoogate trace names the scope and epoch a variant was served to, among fifty candidates."""

    SCOPES = ["alice", "bob", "carol", "dave", "erin"]
    EPOCHS = range(10)

    @classmethod
    def setUpClass(cls):
        cls.workspace = Workspace()
        torch.manual_seed(7)
        state = collections.OrderedDict((f"layers.{i}.weight", torch.randn(16, 16)) for i in range(8))
        cls.original = cls.workspace.save("original.pt", state)

    @classmethod
    def tearDownClass(cls):
        cls.workspace.close()

    def trace(self, leaked):
        command = [ZOOGATE, "trace", leaked, "--original", self.original, "--mtd-secret", self.workspace.secret,
                   "--scopes", ",".join(self.SCOPES), "--epochs", f"{self.EPOCHS[0]}-{self.EPOCHS[-1]}"]
        return subprocess.run(command, capture_output=True, text=True)

    def test_every_sampled_variant_is_traced_to_its_scope_and_epoch(self):
        variants = {}
        for scope in self.SCOPES:
            for epoch in self.EPOCHS:
                path, _ = self.workspace.vary(self.original, f"{scope}-{epoch}.pt", scope=scope, epoch=epoch)
                variants[(scope, epoch)] = path
        self.assertEqual(len({sha256(path) for path in variants.values()}), 50, "fifty distinct variants")
        for scope, epoch in [("alice", 0), ("carol", 4), ("erin", 9), ("bob", 7)]:
            run = self.trace(variants[(scope, epoch)])
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            self.assertIn(f"scope: {scope}\n", run.stdout)
            self.assertIn(f"epoch: {epoch}\n", run.stdout)

    def test_an_unrelated_file_matches_none(self):
        torch.manual_seed(8)
        other = self.workspace.save("other.pt", {"layers.0.weight": torch.randn(16, 16)})
        for leaked in (other, self.original):
            run = self.trace(leaked)
            self.assertEqual(run.returncode, 5, run.stdout + run.stderr)
            self.assertIn("none", run.stdout)


if __name__ == "__main__":
    unittest.main()
