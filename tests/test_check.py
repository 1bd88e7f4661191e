"""tracer check: hand tables with each kind of slip, on networks of several shapes."""
import copy
import json
import math
import signal
import zipfile

import numpy as np
import pytest

from tracer.explain import check
from tracer.training import engine, scenario as scenario_module
from tests.conftest import BASE, assert_refused

DEEP = copy.deepcopy(BASE)
DEEP["layers"] = [
    {"units": 3, "activation": "sigmoid", "init": "xavier_uniform", "bias_init": "normal", "bias_std": 0.3},
    {"units": 2, "activation": "tanh", "init": "xavier_uniform", "bias_init": "normal", "bias_std": 0.3},
    {"units": 1, "activation": "identity", "init": "xavier_uniform"},
]
SHAPES = {"2-3-1 tanh": BASE, "2-3-2-1 sigmoid/tanh": DEEP}


def g(v):
    return f"{v:.10g}"


def run(raw):
    return engine.run(scenario_module.from_dict(copy.deepcopy(raw)))


def results(trace, rows, tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text("name,value\n" + "\n".join(f"{n},{v}" for n, v in rows) + "\n", encoding="utf-8")
    return {r.entry.text: r for r in check.check(trace, check.read_hand(path, trace))}


def correct_rows(trace):
    L = trace.layers
    rows = [("u1[0]", g(trace.u[0][0, 0, 0])), ("a1[0]", g(trace.a[0][0, 0, 0])),
            (f"a{L}[0]", g(trace.a[L - 1][0, 0, 0])), ("loss", g(trace.loss[0])),
            (f"delta{L}[0]", g(trace.delta[L - 1][0, 0, 0])), ("delta1[0]", g(trace.delta[0][0, 0, 0])),
            ("grad W1[0,1]#0", g(trace.grad_W_sample[0][0, 0, 0, 1])), ("grad W1[0,0]", g(trace.grad_W[0][0, 0, 0])),
            ("update W1[0,0]", g(trace.update_W[0][0, 0, 0])), ("W1[0,0]@1", g(trace.W[0][1, 0, 0]))]
    return rows


@pytest.mark.parametrize("shape", SHAPES)
def test_all_correct_numbers_pass(shape, tmp_path, invoke):
    trace = run(SHAPES[shape])
    found = results(trace, correct_rows(trace), tmp_path)
    assert all(r.right for r in found.values())


def test_precision_as_written(tmp_path):
    trace = run(BASE)
    a = trace.a[0][0, 0, 0]
    ok = f"{a:.4f}"
    off = f"{float(ok) + 1e-4:.4f}"
    found = results(trace, [("a1[0]", ok)], tmp_path)
    assert found["a1[0]"].right
    found = results(trace, [("a1[0]", off)], tmp_path)
    assert not found["a1[0]"].right
    assert check.tolerance_of("0.2413") == pytest.approx(5e-5) and check.tolerance_of("1.83e18") == pytest.approx(5e15)


@pytest.mark.parametrize("shape", SHAPES)
def test_factor_from_another_unit(shape, tmp_path):
    trace = run(SHAPES[shape])
    x0 = trace.scenario.inputs[0, 0]
    planted = x0 * trace.delta[0][0, 0, 2]          # δ of unit 2 where unit 1 belongs
    found = results(trace, [("grad W1[0,1]#0", g(planted))], tmp_path)
    r = found["grad W1[0,1]#0"]
    assert r.kind == "mistake" and "taken from another unit" in r.explanation and "delta1[2]@0#0" in r.explanation


def test_factor_from_another_step(tmp_path):
    trace = run(BASE)
    # δ⁽¹⁾₀ at step 1 computed with the slope of step 0
    back = trace.W[1][1, 0, 0] * trace.delta[1][1, 0, 0]
    planted = trace.slope[0][0, 0, 0] * back
    found = results(trace, [("delta1[0]@1", g(planted))], tmp_path)
    r = found["delta1[0]@1"]
    assert r.kind == "mistake" and "another step" in r.explanation and "slope1[0]@1#0" in r.explanation


@pytest.mark.parametrize("shape", SHAPES)
def test_sign_flip(shape, tmp_path):
    trace = run(SHAPES[shape])
    found = results(trace, [("delta1[0]", g(-trace.delta[0][0, 0, 0]))], tmp_path)
    assert "sign is flipped" in found["delta1[0]"].explanation


@pytest.mark.parametrize("shape", SHAPES)
def test_missing_half_in_the_loss(shape, tmp_path):
    trace = run(SHAPES[shape])
    L = trace.layers
    y, t = trace.a[L - 1][0, 0, 0], trace.scenario.targets[0, 0]
    rows = [("loss#0", g((t - y) ** 2)),                                     # the ½ dropped
            (f"delta{L}[0]", g(2 * (y - t) * trace.slope[L - 1][0, 0, 0]))]  # and its derivative doubled
    found = results(trace, rows, tmp_path)
    for name, _ in rows:
        assert found[name].kind == "mistake" and "missing ½ or factor 2" in found[name].explanation


def test_update_with_wrong_sign_and_wrong_learning_rate(tmp_path):
    trace = run(BASE)
    W, g2 = trace.W[1][0, 0, 0], trace.grad_W[1][0, 0, 0]
    rows = [("W2[0,0]@1", g(W + 0.1 * g2)), ("update W2[0,0]", g(0.01 * g2)), ("update W2[1,0]", g(trace.grad_W[1][0, 1, 0]))]
    found = results(trace, rows, tmp_path)
    assert "wrong sign" in found["W2[0,0]@1"].explanation
    assert "learning rate of 0.01 instead of 0.1" in found["update W2[0,0]"].explanation
    assert "learning rate is left out" in found["update W2[1,0]"].explanation


@pytest.mark.parametrize("shape", SHAPES)
def test_value_carried_forward_after_rounding(shape, tmp_path):
    trace = run(SHAPES[shape])
    widths = trace.scenario.widths
    a = trace.a[0][0, 0]
    rounded = np.round(a, 2)
    # u2[0] computed from activations rounded to 2 decimals (each right at that precision)
    u = sum(rounded[i] * trace.W[1][0, i, 0] for i in range(widths[1])) + trace.b[1][0, 0]
    rows = [(f"a1[{i}]", f"{rounded[i]:.2f}") for i in range(widths[1])] + [("u2[0]", f"{u:.10f}")]
    found = results(trace, rows, tmp_path)
    assert all(found[f"a1[{i}]"].right for i in range(widths[1]))
    assert found["u2[0]"].kind == "rounding" and "carried forward after rounding" in found["u2[0]"].explanation


@pytest.mark.parametrize("shape", SHAPES)
def test_consequences_are_not_new_mistakes(shape, tmp_path):
    trace = run(SHAPES[shape])
    widths = trace.scenario.widths
    wrong_a = trace.a[0][0, 0].copy()
    wrong_a[0] += 0.25
    wrong_a = [float(g(v)) for v in wrong_a]   # a person carries on with the numbers as written
    u = sum(wrong_a[i] * trace.W[1][0, i, 0] for i in range(widths[1])) + trace.b[1][0, 0]
    rows = [(f"a1[{i}]", g(wrong_a[i])) for i in range(widths[1])] + [("u2[0]", g(u))]
    found = results(trace, rows, tmp_path)
    assert found["a1[0]"].kind == "mistake"
    assert found["u2[0]"].kind == "consequence" and "a1[0]" in found["u2[0]"].explanation


def test_parameters_updated_one_layer_at_a_time(tmp_path):
    trace = run(BASE)
    # δ⁽¹⁾₀ back-propagated through W2 after W2 was already updated
    back = trace.W[1][1, 0, 0] * trace.delta[1][0, 0, 0]
    planted = trace.slope[0][0, 0, 0] * back
    found = results(trace, [("delta1[0]", g(planted))], tmp_path)
    assert "updated one layer at a time" in found["delta1[0]"].explanation


def test_updated_one_layer_at_a_time_in_a_batch_gradient(tmp_path):
    trace = run(DEEP)
    s = trace.scenario
    total = 0.0
    for slot in range(3):
        # δ⁽²⁾ and then δ⁽¹⁾ with W3 and W2 of step 1 (each layer updated before the one below)
        d3 = trace.delta[2][0, slot]
        d2 = trace.slope[1][0, slot] * (trace.W[2][1] @ d3)
        d1 = trace.slope[0][0, slot] * (trace.W[1][1] @ d2)
        total += s.inputs[slot, 0] * d1[0]
    found = results(trace, [("grad W1[0,0]", g(total))], tmp_path)
    assert "updated one layer at a time" in found["grad W1[0,0]"].explanation


def test_cli_exit_codes_and_json(tmp_path, invoke):
    trace = run(BASE)
    path = tmp_path / "scenario.toml"
    path.write_text(scenario_module.dump_toml(copy.deepcopy(BASE)), encoding="utf-8")
    good = tmp_path / "good.csv"
    good.write_text("\n".join(f"{n},{v}" for n, v in correct_rows(trace)) + "\n", encoding="utf-8")
    assert invoke("check", path, good).exit_code == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(f"delta1[0],{g(-trace.delta[0][0, 0, 0])}\n", encoding="utf-8")
    result = invoke("check", path, bad, "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["right"] == 0 and data["numbers"][0]["kind"] == "mistake"
    typo = tmp_path / "typo.csv"
    typo.write_text("grad X1[0,0],1\n", encoding="utf-8")
    result = invoke("check", path, typo)
    assert result.exit_code == 2 and "line 1" in result.output


@pytest.mark.libreoffice
def test_check_a_persons_workbook(tmp_path, soffice):
    openpyxl = pytest.importorskip("openpyxl")
    trace = engine.run(scenario_module.load("linear-regression"))
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Mine"
    sheet["A1"], sheet["A2"], sheet["A3"], sheet["A4"] = 170, 65, 0.5, 10
    sheet["B1"] = "=A3*A1+A4"                 # prediction 95
    sheet["B2"] = "=(B1-A2)^2"                # E = 900
    sheet["B3"] = "=(B1-A2)*A1"               # the 2 forgotten: 5100
    path = tmp_path / "mine.xlsx"
    book.save(path)
    mapping = tmp_path / "map.csv"
    mapping.write_text("name,cell\nu1[0],Mine!B1\nloss,Mine!B2\ngrad W1[0,0],Mine!B3\n", encoding="utf-8")
    entries = check.read_workbook(path, mapping, trace)
    found = {r.entry.text: r for r in check.check(trace, entries)}
    assert found["u1[0]"].right and found["loss"].right
    assert "missing ½ or factor 2" in found["grad W1[0,0]"].explanation


def test_residual_network_hand_values(tmp_path):
    raw = copy.deepcopy(DEEP)
    raw["layers"][0]["units"] = 2
    raw["layers"][1]["residual"] = True
    trace = run(raw)
    rows = [("a2[1]", g(trace.a[1][0, 0, 1])), ("slope2[1]", g(trace.slope[1][0, 0, 1])),
            ("delta1[0]", g(trace.delta[0][0, 0, 0])), ("grad W1[1,0]", g(trace.grad_W[0][0, 1, 0]))]
    found = results(trace, rows, tmp_path)
    assert all(r.right for r in found.values()), {k: r.explanation for k, r in found.items()}
    # forgetting the skip connection in the backward pass is caught as a mistake
    no_skip = trace.slope[0][0, 0, 0] * (trace.W[1][0, 0] @ trace.delta[1][0, 0])
    found = results(trace, [("delta1[0]", g(no_skip))], tmp_path)
    assert found["delta1[0]"].kind == "mistake"


def test_batchnorm_names_and_slips(tmp_path):
    from tests.test_remedies import network
    trace = run(network(batchnorm=True))
    rows = [("gamma2[1]@1", g(trace.W[1][1, 0, 1])), ("grad gamma2[0]", g(trace.grad_W[1][0, 0, 0])),
            ("grad beta2[0]#1", g(trace.grad_b_sample[1][0, 1, 0])), ("u2[1]", g(trace.u[1][0, 0, 1])),
            ("update gamma2[1]", g(-trace.update_W[1][0, 0, 1]))]
    found = results(trace, rows, tmp_path)
    assert all(found[name].right for name, _ in rows[:4])
    assert "sign is flipped" in found["update gamma2[1]"].explanation
    with pytest.raises(check.InputError, match="batchnorm layer: its parameters are gamma2"):
        check.parse_name("W2[0,0]", trace)


def test_explaining_a_wrong_batchnorm_value(tmp_path):
    """A wrong u or γ of a batchnorm layer (γ is a 1 × units W) is explained, not an IndexError;
    u = γ·x̂ + β with another unit's γ (they differ after the first update) is named as such."""
    from tests.test_remedies import network
    trace = run(network(batchnorm=True))
    gamma, xhat, beta = trace.W[1][1, 0], trace.norm["xhat"][1][1, 0], trace.b[1][1]
    assert gamma[0] != gamma[1]
    sample = trace.samples(1)[0]       # x̂ above is this sample's (slot 0 of step 1)
    rows = [("u2[0]", "95"), ("gamma2[2]@1", "7"), (f"u2[0]@1#{sample}", g(gamma[1] * xhat[0] + beta[0]))]
    found = results(trace, rows, tmp_path)
    assert all(r.kind == "mistake" and r.explanation for r in found.values())
    assert "gamma2[1]@1 was used instead" in found[f"u2[0]@1#{sample}"].explanation


def test_explaining_a_wrong_number_computes_each_quantity_once(tmp_path, monkeypatch):
    """12 sigmoid layers of width 6 (6¹¹ paths from layer 1 to the output): explaining a wrong
    δ, batch gradient or bias gradient of layer 1 evaluates each other quantity's local formula at
    most twice (from the person's numbers, and with the layers above already updated), so the
    explanation is polynomial in the size of the net, not one evaluation per path."""
    raw = copy.deepcopy(BASE)
    raw["layers"] = [{"units": 6, "activation": "sigmoid", "init": "xavier_uniform"}] * 12 + [
        {"units": 1, "activation": "identity", "init": "xavier_uniform"}]
    trace = run(raw)
    counts = {}
    evaluate = check.Local.__call__

    def counted(self, key, get):
        counts[key] = counts.get(key, 0) + 1
        return evaluate(self, key, get)
    def hang(number, frame):
        raise AssertionError("the explanation did not finish within 60 s (it takes well under 1 s)")
    monkeypatch.setattr(check.Local, "__call__", counted)
    previous = signal.signal(signal.SIGALRM, hang)   # a hang guard: an exponential search never ends
    signal.alarm(60)
    try:
        for name in ("delta1[0]", "grad W1[0,0]", "grad b1[0]"):
            counts.clear()
            key = check.parse_name(name, trace)
            (result,) = check.check(trace, [check.Entry(1, name, key, "1", 1.0, 0.5)])
            assert result.kind == "mistake" and result.explanation
            assert max(count for other, count in counts.items() if other != key) <= 2, name
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ bad input: one line, exit 2

@pytest.mark.parametrize("written", ["nan", "NaN", "inf", "Infinity", "-inf", "1e309", "-1e309", "0e999", "1E+400"])
def test_a_value_that_is_not_a_finite_number(tmp_path, invoke, written):
    hand = tmp_path / "hand.csv"
    hand.write_text(f"name,value\nloss,0.5\nu1[0],{written}\n", encoding="utf-8")
    assert_refused(invoke("check", "xor", hand), f"{hand} line 3: '{written}' is not a finite number")


def test_tolerance_of_extreme_exponents():
    assert check.tolerance_of("0e999") == math.inf and check.tolerance_of("1e-400") == 0.0
    for text in ("nan", "inf", "-Infinity", "x"):
        with pytest.raises(ValueError):
            check.tolerance_of(text)
    assert check.written_number("1.5e2") == (150.0, 5.0)


def test_byte_order_mark_in_hand_csv_and_map(tmp_path, invoke):
    trace = engine.run(scenario_module.load("xor"))
    hand = tmp_path / "hand.csv"
    hand.write_bytes("\ufeffname,value\nloss,{}\n".format(g(trace.loss[0])).encode("utf-8"))
    result = invoke("check", "xor", hand)
    assert result.exit_code == 0, result.output
    mapping = tmp_path / "map.csv"
    mapping.write_bytes("\ufeffname,cell\nloss,Sheet1!A0\n".encode("utf-8"))
    (tmp_path / "mine.xlsx").write_bytes(b"PK\x03\x04")
    assert_refused(invoke("check", "xor", tmp_path / "mine.xlsx", "--map", mapping), f"{mapping} line 2", "row 0")


def test_hand_file_that_is_not_a_regular_file(tmp_path, invoke):
    assert_refused(invoke("check", "xor", "/dev/zero"), "/dev/zero", "not a regular file")
    (tmp_path / "hand.csv").write_bytes(b"name,value\nloss,\xff\n")
    assert_refused(invoke("check", "xor", tmp_path / "hand.csv"), "not UTF-8 text (byte 0xff on line 2)")


CELLS = {"Sheet1!ZZZZ1": "column ZZZZ is beyond XFD", "A0": "row 0 is outside the rows 1..1,048,576",
         "1A": "is not a cell reference", "Sheet1!": "no cell after '!'", "XFD1048577": "row 1048577 is outside",
         "A1:B2": "is a range", "A:A": "is a range", "!A1": "no sheet name", "": "expected name,cell"}


@pytest.mark.parametrize("cell", CELLS)
def test_map_cell_references_are_checked_before_libreoffice(tmp_path, invoke, cell):
    mapping = tmp_path / "map.csv"
    mapping.write_text(f"name,cell\nloss,Sheet1!A1\nu1[0],{cell}\n" if cell else "name,cell\nloss\n", encoding="utf-8")
    workbook = tmp_path / "mine.xlsx"
    workbook.write_bytes(b"not looked at: the map is read first")
    line = 3 if cell else 2
    assert_refused(invoke("check", "xor", workbook, "--map", mapping), f"{mapping} line {line}", CELLS[cell])


def test_parse_cell_accepts_quoted_sheets_and_absolute_references():
    assert check.parse_cell("'My ''own'' sheet'!$C$7") == ("My 'own' sheet", "C7")
    assert check.parse_cell("xfd1048576") == (None, "XFD1048576")


@pytest.mark.parametrize("content,problem", [(b"", "the file is empty"), (b"name,value\nloss,1\n", "not a workbook")])
def test_a_workbook_that_is_not_a_spreadsheet(tmp_path, invoke, content, problem):
    mapping = tmp_path / "map.csv"
    mapping.write_text("name,cell\nloss,Sheet1!A1\n", encoding="utf-8")
    workbook = tmp_path / "mine.xlsx"
    workbook.write_bytes(content)
    assert_refused(invoke("check", "xor", workbook, "--map", mapping), workbook, problem)


@pytest.mark.libreoffice
def test_a_zip_that_is_not_a_workbook_and_an_unknown_sheet(tmp_path, invoke, soffice):
    mapping = tmp_path / "map.csv"
    mapping.write_text("name,cell\nloss,Other!A1\n", encoding="utf-8")
    fake = tmp_path / "fake.xlsx"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("hello.txt", "not a spreadsheet")
    assert_refused(invoke("check", "xor", fake, "--map", mapping), fake, "cannot be opened as a workbook")
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.active.title, book.active["A1"] = "Mine", 0.5
    real = tmp_path / "real.xlsx"
    book.save(real)
    assert_refused(invoke("check", "xor", real, "--map", mapping), f"{mapping} line 2", "no sheet 'Other'", "Mine")


def test_a_long_name_is_shortened(tmp_path, invoke):
    hand = tmp_path / "hand.csv"
    hand.write_text("u1[0]" + "x" * 100_000 + ",1\n", encoding="utf-8")
    message = assert_refused(invoke("check", "xor", hand), "cannot read the name")
    assert len(message) < 300
    hand.write_text("W1[" + "9" * 5000 + ",0],1\n", encoding="utf-8")
    assert_refused(invoke("check", "xor", hand), "cannot read the name")


def test_layernorm_hand_check(tmp_path):
    """Through a layernorm layer: u = γ·x̂ + β, the γ/β gradients and the error passed down read x̂ and
    the per-sample statistics from the engine; the hand numbers are checked, and a u computed with
    another unit's γ is named as such."""
    from tests.test_layers import network
    trace = run(network("layernorm", activation="sigmoid"))
    sample = trace.samples(1)[0]
    rows = [("u2[1]", g(trace.u[1][0, 0, 1])), ("a2[1]", g(trace.a[1][0, 0, 1])), ("slope2[0]", g(trace.slope[1][0, 0, 0])),
            ("delta2[2]", g(trace.delta[1][0, 0, 2])), ("grad gamma2[0]", g(trace.grad_W[1][0, 0, 0])),
            ("grad beta2[0]#" + str(trace.samples(0)[1]), g(trace.grad_b_sample[1][0, 1, 0])),
            ("delta1[0]", g(trace.delta[0][0, 0, 0])), ("grad W1[0,1]", g(trace.grad_W[0][0, 0, 1])),
            ("gamma2[1]@1", g(trace.W[1][1, 0, 1])), (f"u2[2]@1#{sample}", g(trace.u[1][1, 0, 2]))]
    found = results(trace, rows, tmp_path)
    assert all(found[name].right for name, _ in rows), [r.explanation for r in found.values() if not r.right]
    gamma, beta = trace.W[1][1, 0], trace.b[1][1]
    xhat = [trace.values(("xhat", 2, j), "sample", 1, 0, sample) for j in range(3)]
    assert gamma[0] != gamma[1]
    wrong = results(trace, [(f"u2[0]@1#{sample}", g(gamma[1] * xhat[0] + beta[0])), ("grad gamma2[1]", g(-trace.grad_W[1][0, 0, 1]))],
                    tmp_path)
    assert "gamma2[1]@1 was used instead" in wrong[f"u2[0]@1#{sample}"].explanation
    assert "sign is flipped" in wrong["grad gamma2[1]"].explanation
    with pytest.raises(check.InputError, match="layernorm layer: its parameters are gamma2"):
        check.parse_name("W2[0,0]", trace)


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_update_slips_of_any_optimiser(optimizer, tmp_path):
    """Δθ = lr·d for every optimiser: writing d (the learning rate left out), another learning rate,
    or θ + Δθ is named as for sgd, from the optimiser's own update."""
    raw = copy.deepcopy(BASE)
    raw["optimizer"] = {"name": optimizer, "lr": 0.1}
    trace = run(raw)
    W, update = trace.W[1][0, 0, 0], trace.update_W[1][0, 0, 0]
    rows = [("W2[0,0]@1", g(W + update)), ("update W2[0,0]", g(update / 0.1)), ("update W2[1,0]", g(0.03 * trace.update_W[1][0, 1, 0] / 0.1))]
    found = results(trace, rows, tmp_path)
    assert "wrong sign" in found["W2[0,0]@1"].explanation
    assert "learning rate is left out" in found["update W2[0,0]"].explanation
    assert "learning rate of 0.03 instead of 0.1" in found["update W2[1,0]"].explanation
