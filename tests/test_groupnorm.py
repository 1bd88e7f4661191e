"""The groupnorm layer kind (tracer/layers/groupnorm.py): its numpy faces against central differences,
against layernorm (one group) and against statistics computed group by group; its scenario face (groups
that do not divide the width are refused in one line); its records; chain, hand check, diagnose and
gradcheck through it; its workbooks in both layouts recomputed by LibreOffice (never mocked)."""
import copy
import tomllib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tracer import layers
from tracer.explain import chain, check, diagnose, gradcheck
from tracer.layers.base import Layer
from tracer.recalc import verify
from tracer.training import engine, scenario as scenario_module, templates
from tracer.workbook import layout as column_layout, matrix, writer
from tests.conftest import assert_refused, build, write_toml

GROUPNORM, LAYERNORM = layers.get("groupnorm"), layers.get("layernorm")
INPUTS = [[0.3, -1.2], [1.1, 0.4], [-0.7, 0.9], [0.2, 2.0]]
TARGETS = [[0.5], [-0.3], [0.8], [0.1]]


def norm_layer(units, groups, eps=1e-5, kind="groupnorm"):
    return Layer(units=units, activation="identity", activation_params={}, init="constant", init_params={"value": 1.0},
                 weights=None, bias_init="constant", bias_params={"value": 0.0}, bias=None, train_bias=True, kind=kind,
                 eps=eps, groups=groups)


def network(groups=2, width=6, steps=3, batch=2, activation="tanh", optimizer="sgd", eps=1e-5):
    """Linear (identity, no trained bias, `width` units) → groupnorm in `groups` → f → a dense output."""
    return {
        "seed": 3, "steps": steps, "data": {"inputs": INPUTS, "targets": TARGETS},
        "layers": [{"units": width, "activation": "identity", "init": "xavier_uniform", "train_bias": False},
                   {"kind": "groupnorm", "groups": groups, "activation": activation, "eps": eps},
                   {"units": 1, "activation": "identity", "init": "xavier_uniform"}],
        "loss": {"name": "half_sse", "reduction": "mean"},
        "optimizer": {"name": optimizer, "lr": 0.05},
        "training": {"batch": batch},
    }


def numeric_gradient(function, array, h=1e-6):
    """Central differences of the scalar function() by every entry of `array` (changed in place)."""
    out = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + h
        up = function()
        array[index] = original - h
        down = function()
        array[index] = original
        out[index] = (up - down) / (2 * h)
    return out


def faces(kind, layer, below, W, b, delta):
    """u, the record after backward, the error passed down and the per-sample gradients of one batch."""
    u, record = kind.forward(layer, below, W, b)
    kind.backward(layer, record, delta, W)
    return u, record, kind.error_down(layer, record, delta, W, None), kind.gradients(layer, record, below, delta)


# ------------------------------------------------------------------ numpy face

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), shape=st.sampled_from([(4, 1), (4, 2), (6, 2), (6, 3), (8, 2),
                                                                                        (8, 4), (6, 6)]),
       eps=st.sampled_from([1e-5, 0.1]))
def test_backward_is_the_derivative_of_the_forward(seed, batch, shape, eps):
    """With E = Σ c·u, δ = c: error_down is ∂E/∂a⁽ˡ⁻¹⁾ and the batch sums of the gradients are ∂E/∂γ,
    ∂E/∂β, each against central differences of the forward, for every group size."""
    units, groups = shape
    rng = np.random.default_rng(seed)
    layer = norm_layer(units, groups, eps)
    below = rng.normal(size=(batch, units))
    W, b = rng.normal(size=(1, units)), rng.normal(size=units)
    c = rng.normal(size=(batch, units))
    objective = lambda: np.sum(c * GROUPNORM.forward(layer, below, W, b)[0])  # noqa: E731
    _, _, error, (grad_W, grad_b) = faces(GROUPNORM, layer, below, W, b, c)
    assert grad_W.shape == (batch, 1, units) and grad_b.shape == (batch, units)
    np.testing.assert_allclose(error, numeric_gradient(objective, below), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_W.sum(axis=0), numeric_gradient(objective, W), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_b.sum(axis=0), numeric_gradient(objective, b), rtol=1e-6, atol=1e-8)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), units=st.integers(1, 7))
def test_one_group_is_layernorm_bit_for_bit(seed, batch, units):
    """groups = 1: u, x̂, dx̂, the error passed down and the gradients are layernorm's, every bit; the
    statistics are layernorm's per-sample ones, repeated for every unit."""
    rng = np.random.default_rng(seed)
    below, W, b, delta = (rng.normal(size=shape) for shape in ((batch, units), (1, units), (units,), (batch, units)))
    grouped = faces(GROUPNORM, norm_layer(units, 1), below, W, b, delta)
    plain = faces(LAYERNORM, norm_layer(units, 1, kind="layernorm"), below, W, b, delta)
    for ours, theirs in ((grouped[0], plain[0]), (grouped[2], plain[2]), (grouped[3][0], plain[3][0]),
                         (grouped[3][1], plain[3][1])):
        np.testing.assert_array_equal(ours, theirs)
    for key in ("xhat", "dxhat"):
        np.testing.assert_array_equal(grouped[1][key], plain[1][key])
    for key in ("mean", "var", "m1", "m2"):
        np.testing.assert_array_equal(grouped[1][key], np.repeat(plain[1][key][:, None], units, axis=1))


def test_layernorm_deep_with_one_group_trains_as_layernorm_deep():
    """The layernorm-deep template with its layernorm layers made groupnorm (groups = 1): every
    recorded u, a, δ, parameter and gradient of the 30 steps is layernorm-deep's."""
    raw = tomllib.loads(templates.read("layernorm-deep"))
    plain = engine.run(scenario_module.from_dict(copy.deepcopy(raw)))
    for layer in raw["layers"]:
        if layer.get("kind") == "layernorm":
            layer.update(kind="groupnorm", groups=1)
    grouped = engine.run(scenario_module.from_dict(raw))
    assert [layer.kind for layer in grouped.scenario.layers] == ["dense", "groupnorm"] * 5 + ["dense"]
    for store in ("u", "a", "delta", "error", "W", "b", "grad_W", "grad_b"):
        for ours, theirs in zip(getattr(grouped, store), getattr(plain, store)):
            if theirs is not None:
                np.testing.assert_array_equal(ours, theirs, err_msg=store)


def test_statistics_are_those_of_each_group():
    """μ, σ² (biased) recomputed group by group with np.mean/np.var on slices of the layer below; x̂ of
    every group has mean 0 and variance σ²/(σ² + eps); m1, m2 the group's means of dx̂ and dx̂·x̂."""
    rng = np.random.default_rng(7)
    units, groups, eps = 6, 3, 1e-3
    below, W, b, delta = (rng.normal(size=shape) for shape in ((4, units), (1, units), (units,), (4, units)))
    _, record, _, _ = faces(GROUPNORM, norm_layer(units, groups, eps), below, W, b, delta)
    for g in range(groups):
        part = slice(2 * g, 2 * g + 2)
        x, xhat = below[:, part], record["xhat"][:, part]
        for key, expected in (("mean", x.mean(axis=1)), ("var", x.var(axis=1)),
                              ("m1", (delta * W[0])[:, part].mean(axis=1)),
                              ("m2", ((delta * W[0])[:, part] * xhat).mean(axis=1))):
            np.testing.assert_allclose(record[key][:, part], np.repeat(expected[:, None], 2, axis=1), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(xhat.mean(axis=1), 0, atol=1e-12)
        np.testing.assert_allclose(xhat.var(axis=1), x.var(axis=1) / (x.var(axis=1) + eps), rtol=1e-12)


def test_one_unit_per_group_is_instance_norm_and_passes_nothing_down():
    """groups = units: σ² = 0 and x̂ = 0 whatever the input, so u = β and the error passed down is 0."""
    rng = np.random.default_rng(1)
    below, W, b, delta = (rng.normal(size=shape) for shape in ((3, 5), (1, 5), (5,), (3, 5)))
    u, record, error, (grad_W, _) = faces(GROUPNORM, norm_layer(5, 5), below, W, b, delta)
    assert (record["var"] == 0).all() and (record["xhat"] == 0).all()
    np.testing.assert_array_equal(u, np.broadcast_to(b, u.shape))
    assert (error == 0).all() and (grad_W == 0).all()


def test_two_units_per_group_pass_down_a_fraction_eps_over_variance():
    """In a group of two, x̂ = ±d/√(d² + eps) and the error passed down is (dx̂ − m1)/√(σ² + eps) times
    eps/(σ² + eps): the derivative of the closed form, not the engine's general one."""
    rng = np.random.default_rng(5)
    below, W, b, delta = (rng.normal(size=shape) for shape in ((4, 8), (1, 8), (8,), (4, 8)))
    eps = 1e-5
    _, record, error, _ = faces(GROUPNORM, norm_layer(8, 4, eps), below, W, b, delta)
    var, dxhat = record["var"], record["dxhat"]
    expected = (dxhat - record["m1"]) / np.sqrt(var + eps) * eps / (var + eps)
    np.testing.assert_allclose(error, expected, rtol=1e-8)
    assert (np.abs(error) < 1e-2 * np.abs(dxhat - record["m1"]) / np.sqrt(var + eps)).all()


# ------------------------------------------------------------------ scenario face

@pytest.mark.parametrize("edit,key,fragment", [
    ({"groups": 4}, "layers[1].groups", "4 groups do not divide the layer's 6 units (a groupnorm layer's groups divide its "
                                        "width: 1, 2, 3, 6)"),
    ({"groups": 0}, "layers[1].groups", "must be at least 1"),
    ({"groups": 2.0}, "layers[1].groups", "must be an integer"),
    ({"units": 5}, "layers[1].units", "a groupnorm layer keeps the width of the layer below (6)"),
    ({"init": "normal"}, "layers[1].init", "does not apply to a groupnorm layer"),
])
def test_bad_groupnorm_settings_are_refused_in_one_line(tmp_path, invoke, edit, key, fragment):
    raw = network()
    raw["layers"][1].update(edit)
    path = write_toml(tmp_path, scenario_module.dump_toml(raw))
    assert_refused(invoke("run", path, "--trace", tmp_path / "t.csv"), f"{path}: {key}: ", fragment)
    assert not (tmp_path / "t.csv").exists()


def test_groups_on_another_kind_names_the_kind_it_applies_to(tmp_path, invoke):
    raw = network()
    raw["layers"][0]["groups"] = 2
    path = write_toml(tmp_path, scenario_module.dump_toml(raw))
    assert_refused(invoke("run", path, "--trace", tmp_path / "t.csv"), "layers[0].groups",
                   "'groups' applies to kind = \"groupnorm\" layers")
    raw = network()
    raw["layers"][1:2] = [{"kind": "layernorm", "groups": 2}]
    path = write_toml(tmp_path, scenario_module.dump_toml(raw))
    assert_refused(invoke("run", path, "--trace", tmp_path / "t.csv"), "layers[1].groups", "does not apply to a layernorm layer")


def test_groups_default_to_one_and_a_batch_of_one_is_fine():
    raw = network(batch=1)
    del raw["layers"][1]["groups"]
    loaded = scenario_module.from_dict(raw)
    assert loaded.layers[1].groups == 1 and loaded.batch_size == 1
    assert "groupnorm 6 tanh (1 group)" in repr(loaded)
    assert "groupnorm 6 tanh (3 groups)" in repr(scenario_module.from_dict(network(groups=3)))


# ------------------------------------------------------------------ records face

def test_group_statistics_are_recorded_per_unit_in_the_csv():
    """gn_mean, gn_var, gn_m1, gn_m2: one CSV row per unit (its group's value, equal across a group);
    xhat and dxhat per unit; γ and β named gamma, beta."""
    trace = build(network(groups=2, steps=2))
    by_name = {}
    for row in (row for row in trace.rows() if row[0] == 1 and row[1] == trace.samples(1)[1]):
        by_name.setdefault(row[2], []).append(row)
    for name in ("gn_mean", "gn_var", "gn_m1", "gn_m2", "xhat", "dxhat"):
        assert [(r[3], r[4], r[5]) for r in by_name[name]] == [(2, j, None) for j in range(6)], name
    for name in ("gn_mean", "gn_var", "gn_m1", "gn_m2"):
        values = [r[6] for r in by_name[name]]
        assert values[:3] == [values[0]] * 3 and values[3:] == [values[3]] * 3 and values[0] != values[3], name
    below = trace.a[0][1, 1]
    np.testing.assert_allclose([r[6] for r in by_name["gn_var"]], np.repeat([below[:3].var(), below[3:].var()], 3), rtol=1e-13)
    names = {row[2] for row in trace.rows()}
    assert {"gamma", "beta", "grad_gamma"} <= names and not {"ln_mean", "bn_mean"} & names


# ------------------------------------------------------------------ chain, check, diagnose, gradcheck

def test_chain_rule_through_groupnorm_multiplies_to_the_engine_gradient():
    trace = build(network(groups=3, activation="sigmoid"))
    for name in ("gamma2[0]", "gamma2[5]", "beta2[3]", "W1[0,1]", "W1[1,4]", "W3[2,0]"):
        for step in range(trace.steps):
            for sample in trace.samples(step).tolist():
                explained = chain.explain(trace, name, step=step, sample=sample)
                assert explained.product == pytest.approx(explained.engine, rel=1e-12, abs=1e-300), (name, step)
    explained = chain.explain(trace, "W1[0,3]", step=1)
    assert "groupnorm layer 2" in explained.factors[1].meaning and "unit 3's group, units 2…3" in explained.factors[1].meaning


def test_chain_error_down_evaluated_with_the_trace_is_the_engines():
    """(dx̂ⱼ − m1ⱼ − x̂ⱼ·m2ⱼ)/√(σ²ⱼ + ε), evaluated with the trace's per-unit statistics, is e⁽¹⁾ⱼ."""
    trace = build(network(groups=2, activation="sigmoid"))
    names, eps = chain.Names(), trace.scenario.layers[1].eps
    symbols = {"dx̂": "dxhat", "x̂": "xhat", "m1": "gn_m1", "m2": "gn_m2", "σ²": "gn_var"}
    for step in range(trace.steps):
        for slot, sample in enumerate(trace.samples(step).tolist()):
            for j in range(6):
                _, expression = GROUPNORM.chain_error_down(trace.scenario.layers[1], 2, j, names)
                values = {names.unit(symbol, 2, j): float(trace.values((name, 2, j), "sample", step, slot, sample))
                          for symbol, name in symbols.items()}
                values[names.plain("ε", "")] = eps
                engine_error = trace.error[0][step, slot, j]
                assert float(expression.xreplace(values)) == pytest.approx(engine_error, rel=1e-9, abs=1e-15)


def test_groupnorm_hand_check(tmp_path):
    """A hand calculation through a groupnorm layer: u = γ·x̂ + β, a, δ, the γ/β gradients, the error
    passed down to layer 1 and layer 1's gradient are checked right; a flipped sign is named."""
    trace = build(network(groups=2, activation="sigmoid"))
    g = lambda value: f"{value:.10g}"  # noqa: E731
    rows = [("u2[4]", g(trace.u[1][0, 0, 4])), ("a2[4]", g(trace.a[1][0, 0, 4])), ("delta2[1]", g(trace.delta[1][0, 0, 1])),
            ("grad gamma2[3]", g(trace.grad_W[1][0, 0, 3])), ("grad beta2[2]", g(trace.grad_b[1][0, 2])),
            ("delta1[5]", g(trace.delta[0][0, 0, 5])), ("grad W1[1,2]", g(trace.grad_W[0][0, 1, 2]))]
    path = tmp_path / "hand.csv"
    path.write_text("name,value\n" + "\n".join(f"{n},{v}" for n, v in rows) + "\n", encoding="utf-8")
    found = {r.entry.text: r for r in check.check(trace, check.read_hand(path, trace))}
    assert all(found[name].right for name, _ in rows), [r.explanation for r in found.values() if not r.right]
    path.write_text(f"name,value\ngrad gamma2[1],{g(-trace.grad_W[1][0, 0, 1])}\n", encoding="utf-8")
    wrong = check.check(trace, check.read_hand(path, trace))[0]
    assert not wrong.right and "sign is flipped" in wrong.explanation


def test_diagnose_follows_the_dominant_path_along_the_diagonal():
    """The error through a groupnorm layer follows unit j of the layer below into x̂ⱼ (γⱼ on that edge);
    its link is |γⱼ|/√(σ²ⱼ + ε) with σ²ⱼ of unit j's group, averaged over the step's samples."""
    trace = build(network(groups=2, steps=4, activation="sigmoid"))
    units, _, weights = diagnose.dominant_path(trace, 1, 0)
    assert len(units) == 3 and units[0] == units[1] and weights[0] == trace.W[1][0, 0, units[1]]
    links, edges = GROUPNORM.diagnose_links(trace.scenario.layers[1], 2, trace, 0)
    var = trace.norm["var"][1][0].mean(axis=0)
    np.testing.assert_allclose(np.diag(links), np.abs(trace.W[1][0, 0]) / np.sqrt(var + 1e-5), rtol=1e-12)
    assert (links == np.diag(np.diag(links))).all() and (np.diag(edges) == trace.W[1][0, 0]).all()
    assert diagnose.diagnose(trace).findings


def test_gradcheck_passes_through_groups_with_batches_of_one():
    trace = build(network(groups=3, batch=1, activation="sigmoid"))
    report = gradcheck.check(trace, steps=(0, 1, 2))
    assert report.checks and report.worst.error < 1e-6, report.worst


def test_the_commands_run_on_the_template(invoke):
    """chain, diagnose and gradcheck on groupnorm-deep, as a user types them."""
    explained = invoke("chain", "groupnorm-deep", "--param", "gamma2[0]")
    assert explained.exit_code == 0 and "equal" in explained.output and "DIFFERENT" not in explained.output, explained.output
    below = invoke("chain", "groupnorm-deep", "--param", "W1[0,5]")
    assert below.exit_code == 0 and "unit 5's group, units 4…7" in below.output, below.output
    diagnosed = invoke("diagnose", "groupnorm-deep")
    assert diagnosed.exit_code == 0 and "Findings:" in diagnosed.output, diagnosed.output
    checked = invoke("gradcheck", "groupnorm-deep")
    assert checked.exit_code == 0, checked.output


def test_the_template_shows_what_its_comment_says():
    """groupnorm-deep: layer 1's share of the gradient at step 0 is more than 3 times that of the same
    8-unit net without normalisation (deep-sigmoid widened, same seed), the loss falls to 0.5; the same
    net at 4 units, groups of 2, passes layer 1 less than 1e-15 of the last layer's gradient."""
    def share(raw):
        trace = engine.run(scenario_module.from_dict(raw))
        return trace.gradient_norm(1)[0] / trace.gradient_norm(trace.layers)[0], trace.loss
    raw = tomllib.loads(templates.read("groupnorm-deep"))
    plain = tomllib.loads(templates.read("deep-sigmoid"))
    plain["seed"] = raw["seed"]
    for layer in plain["layers"]:
        layer["units"] = 8 if layer["units"] == 4 else layer["units"]
    grouped, loss = share(copy.deepcopy(raw))
    assert grouped > 3 * share(plain)[0] and loss[-1] < 0.5 * loss[0] and abs(loss[-1] - 0.5) < 1e-3
    for layer in raw["layers"]:
        if layer.get("units") == 8:
            layer["units"] = 4
    assert [layer.get("groups") for layer in raw["layers"]] == [None, 2] * 5 + [None]
    assert share(raw)[0] < 1e-15


# ------------------------------------------------------------------ excel face

def test_group_statistics_sum_over_the_groups_range_of_the_layer_below():
    """μ of unit j sums the cells of its group in the layer below's a columns (a range of m cells), in
    the column layout; every unit of a group has the same range; eps is the Settings cell gn_eps_2."""
    loaded = scenario_module.from_dict(network(groups=2, steps=2, eps=1e-3))
    sheet = column_layout.TraceLayout(loaded, engine.batch_schedule(loaded))
    columns = {c.key: c for c in sheet.columns}
    below = [sheet.cell(("a", 1, j)) for j in range(6)]
    for j in range(6):
        first, last = (below[0], below[2]) if j < 3 else (below[3], below[5])
        assert columns[("gn_mean", 2, j)].sample == f"SUM({first}{{r}}:{last}{{r}})/3"
        assert columns[("gn_var", 2, j)].sample.startswith(f"SUMPRODUCT({first}{{r}}:{last}{{r}}-")
        assert columns[("gn_mean", 2, j)].total is None
    assert "gn_eps_2" in columns[("e", 1, 0)].sample
    assert ("gn_eps_2", 0.001, "layer 2 groupnorm: eps") in column_layout.settings_values(loaded)


def overflow_net():
    """groupnorm (2 groups of 2) on the inputs: sample 0's first group overflows (deviations of 1e200
    squared), its second group and the other samples' groups are finite, sample 3's subnormal."""
    return {"seed": 1, "steps": 3,
            "data": {"inputs": [[1e200, -1e200, 0.5, 0.2], [0.1, 0.7, -0.4, 1.0], [0.9, -0.3, 0.3, 0.6],
                                [3e-160, 1e-160, 2e-160, 0.0]], "targets": [[0.5], [0.1], [0.9], [0.3]]},
            "layers": [{"kind": "groupnorm", "groups": 2, "activation": "tanh"},
                       {"units": 1, "activation": "sigmoid", "init": "xavier_uniform"}],
            "loss": {"name": "half_sse"}, "optimizer": {"name": "sgd", "lr": 0.1}, "training": {"batch": 2}}


def test_an_overflowing_group_is_named_as_the_producer():
    trace = build(overflow_net())
    assert not np.isfinite(trace.norm["var"][0][0, 0, :2]).any() and np.isfinite(trace.norm["var"][0][0, 0, 2:]).all()
    assert np.isfinite(trace.norm["xhat"][0][0, 1]).all()
    found = "\n".join(diagnose.diagnose(trace).findings)
    assert "u1[0] (sample 0) = nan at step 0" in found and "statistics of unit 0's group (units 0…1) overflowing" in found
    assert "x[0] = 1e+200, x[1] = -1e+200" in found


WORKBOOK_NETS = {
    # three groups of two on an adam run in batches of one, clipped by norm, its own eps
    "three-groups-adam": lambda: build(dict(network(groups=3, batch=1, optimizer="adam", eps=1e-3, steps=4),
                                            training={"batch": 1, "clip_norm": 0.5})),
    # one unit per group (x̂ = 0, nothing passes down) before a sigmoid, momentum
    "instance": lambda: build(network(groups=6, optimizer="momentum", activation="sigmoid")),
    # error cells exactly where the engine is inf or NaN (one group of one sample)
    "overflow": lambda: build(overflow_net()),
    "groupnorm-deep": lambda: engine.run(scenario_module.load("groupnorm-deep")),
}


def _column_workbook(name):
    return WORKBOOK_NETS[name]()


def _matrix_workbook(name, folder):
    writer.write(WORKBOOK_NETS[name](), folder / "matrix.xlsx", layout="matrix")
    return folder / "matrix.xlsx"


def _assert_verified(report, name):
    assert report.ok, report.summary()
    if name == "overflow":
        assert report.errors_matched > 100
    else:
        assert report.cells > 1000 and report.errors_matched == 0


@pytest.mark.libreoffice(workbooks=_column_workbook)
@pytest.mark.parametrize("name", [name for name in WORKBOOK_NETS if name != "groupnorm-deep"])   # the template: test_workbook
def test_column_workbooks_verify(recomputed, name):
    _assert_verified(recomputed.report, name)


@pytest.mark.libreoffice(workbooks=_matrix_workbook)
@pytest.mark.parametrize("name", list(WORKBOOK_NETS))
def test_matrix_workbooks_verify(recomputed, name):
    trace = WORKBOOK_NETS[name]()
    _assert_verified(verify.compare(trace, matrix.MatrixLayout(trace.scenario, trace.sample_ids, trace.first_step), recomputed),
                     name)
