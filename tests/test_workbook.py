"""Workbooks: live formulas recomputed by LibreOffice (never mocked) equal the engine, cell for cell."""
import copy

import numpy as np
import openpyxl
import pytest

from tracer import engine, libreoffice, scenario as scenario_module, templates, verify
from tracer.errors import LimitError
from tracer.workbook import writer
from tests.conftest import build


@pytest.mark.parametrize("name", templates.names())
def test_every_template_verifies(soffice, name):
    trace = engine.run(scenario_module.load(name))
    report = verify.verify(trace)
    assert report.ok, report.summary()
    assert report.cells > 100


def test_overflow_cells_are_errors_in_the_same_places(soffice):
    trace = engine.run(scenario_module.load("leaky-relu-explosion"))
    report = verify.verify(trace)
    assert report.ok, report.summary()
    nonfinite = sum(int((~np.isfinite(g)).sum()) for g in trace.grad_W)
    assert nonfinite > 0 and report.errors_matched >= nonfinite


def test_changing_the_learning_rate_cell_recomputes_the_run(soffice, tmp_path):
    original = engine.run(scenario_module.load("xor", steps=8))
    path = tmp_path / "xor.xlsx"
    layout = writer.write(original, path)
    book = openpyxl.load_workbook(path)
    assert book["Settings"]["A2"].value == "learning_rate"
    book["Settings"]["B2"].value = 0.37
    edited = tmp_path / "edited.xlsx"
    book.save(edited)
    recomputed = libreoffice.convert(edited, "xlsx", tmp_path / "lo")
    changed = engine.run(scenario_module.load("xor", steps=8, overrides=["optimizer.lr=0.37"]))
    report = verify.compare(changed, layout, recomputed)
    assert report.ok, report.summary()
    assert not verify.compare(original, layout, recomputed).ok  # the numbers really moved


def test_every_activation_and_loss_verifies(soffice, base_raw):
    for hidden, output, loss in [("sigmoid", "softmax", "softmax_ce"), ("relu", "sigmoid", "bce"),
                                 ("leaky_relu", "identity", "mse"), ("elu", "tanh", "sse"),
                                 ("silu", "gelu", "half_sse"), ("softplus", "identity", "half_sse")]:
        raw = copy.deepcopy(base_raw)
        raw["layers"][0]["activation"] = hidden
        raw["layers"][1]["activation"] = output
        raw["loss"] = {"name": loss, "reduction": "mean"}
        if output == "softmax":
            raw["layers"][1]["units"] = 2
            raw["data"]["targets"] = [[1, 0], [0, 1], [1, 0]]
        if loss == "bce":
            raw["data"]["targets"] = [[1], [0], [1]]
        raw["training"]["batch"] = 2
        report = verify.verify(build(raw))
        assert report.ok, (hidden, output, loss, report.summary())


def test_pdf_conversion(soffice, tmp_path):
    path = tmp_path / "run.xlsx"
    writer.write(engine.run(scenario_module.load("leaky-relu-explosion")), path)
    pdf = libreoffice.convert(path, "pdf", tmp_path / "pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000


def test_sheet_structure(tmp_path):
    path = tmp_path / "run.xlsx"
    layout = writer.write(engine.run(scenario_module.load("sigmoid-vanishing")), path)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Trace", "Steps", "Diagnosis", "ChainRule", "Histograms", "Settings", "Data", "Scenario"]
    sheet = book["Trace"]
    assert sheet.freeze_panes == "C3"
    u = layout.cell(("u", 1, 0))
    assert sheet[f"{u}2"].value == "u₀⁽¹⁾" and sheet[f"{u}2"].comment is not None
    assert sheet[f"{u}3"].value.startswith("=")
    assert "learning_rate" in book.defined_names
    assert len(book["Steps"]._charts) == 3
    assert "sigmoid-vanishing" in book["Scenario"]["A9"].value or any(
        "sigmoid-vanishing" in str(c.value) for c in book["Scenario"]["A"])


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "run.xlsx"
    path.write_bytes(b"previous")
    trace = engine.run(scenario_module.load("xor", steps=2))

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(writer, "_write_settings", explode)
    with pytest.raises(RuntimeError):
        writer.write(trace, path, force=True)
    assert path.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [path]


def test_too_many_rows_is_refused_before_training(tmp_path, invoke):
    result = invoke("run", "xor", "--steps", "300000", "-o", tmp_path / "big.xlsx")
    assert result.exit_code == 2
    assert "1,048,576" in result.output and "--steps 209714" in result.output
    assert not (tmp_path / "big.xlsx").exists()


def test_too_many_columns_and_too_long_formulas_are_refused(base_raw):
    raw = copy.deepcopy(base_raw)
    raw["data"]["inputs"] = [[0.1] * 130] * 3
    raw["layers"][0]["units"] = 130
    with pytest.raises(LimitError, match="16384 columns"):
        writer.check_scenario_fits(scenario_module.from_dict(raw))
    raw["data"]["inputs"] = [[0.1] * 700] * 3
    raw["layers"][0]["units"] = 2
    with pytest.raises(LimitError, match="8192 characters"):
        writer.check_scenario_fits(scenario_module.from_dict(raw))


def test_values_that_cannot_be_plain_cells(soffice, base_raw):
    raw = copy.deepcopy(base_raw)
    raw["layers"][1].update({"init": "explicit", "weights": [[1e-310], [2.5e-320], [0.5]], "bias": [5e-324]})
    trace = build(raw)
    assert writer.constant(1e-310).startswith("=") and writer.constant(float("inf")) == "#NUM!"
    report = verify.verify(trace)
    assert report.ok, report.summary()


def test_window_starting_from_non_finite_parameters(soffice):
    trace = engine.run(scenario_module.load("leaky-relu-explosion")).window(5, 5)
    assert not np.isfinite(trace.W[0][0]).all()
    report = verify.verify(trace)
    assert report.ok, report.summary()


def test_missing_libreoffice_says_how_to_install(monkeypatch, invoke):
    monkeypatch.setattr(libreoffice.shutil, "which", lambda name: None)
    result = invoke("verify", "xor", "--steps", "2")
    assert result.exit_code == 1 and "apt-get install -y libreoffice-calc-nogui" in result.output


@pytest.mark.parametrize("normalize", ["standard", "minmax"])
def test_normalised_inputs_are_computed_in_the_data_sheet(soffice, base_raw, normalize, tmp_path):
    raw = copy.deepcopy(base_raw)
    raw["data"]["normalize"] = normalize
    trace = build(raw)
    x = np.array(base_raw["data"]["inputs"])
    expected = (x - x.mean(0)) / x.std(0) if normalize == "standard" else (x - x.min(0)) / (x.max(0) - x.min(0))
    np.testing.assert_allclose(trace.scenario.inputs, expected, rtol=1e-14)
    report = verify.verify(trace)
    assert report.ok, report.summary()
    path = tmp_path / "n.xlsx"
    writer.write(trace, path)
    data = openpyxl.load_workbook(path)["Data"]
    assert str(data["E2"].value).startswith("=(B2-B$")   # x̂ from the raw cell and the statistics rows


def test_residual_network_verifies(soffice, base_raw):
    raw = copy.deepcopy(base_raw)
    raw["data"]["inputs"] = [[0.5, -1.0, 0.3], [1.5, 0.2, -0.4], [0.1, 0.7, 0.9]]
    raw["layers"] = [{"units": 3, "activation": "tanh", "init": "xavier_uniform", "residual": True},
                     {"units": 3, "activation": "sigmoid", "init": "xavier_uniform", "residual": True},
                     {"units": 1, "activation": "identity", "init": "xavier_uniform"}]
    trace = build(raw)
    assert not np.allclose(trace.a[1], trace.h[1])   # the skip adds a⁽¹⁾
    report = verify.verify(trace)
    assert report.ok, report.summary()
