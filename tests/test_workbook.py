"""Workbooks: live formulas recomputed by LibreOffice (never mocked) equal the engine, cell for cell."""
import copy

import numpy as np
import openpyxl
import pytest

from tracer import engine, libreoffice, scenario as scenario_module, templates, verify
from tracer.errors import LimitError, TracerError
from tracer.workbook import writer
from tests.conftest import BASE, build


def template(name):
    return engine.run(scenario_module.load(name))


@pytest.mark.libreoffice(workbooks=template)
@pytest.mark.parametrize("name", templates.names())
def test_every_template_verifies(recomputed, name):
    report = recomputed.report
    assert report.ok, report.summary()
    assert report.cells > 100


@pytest.mark.libreoffice(workbooks=lambda: template("leaky-relu-explosion"))
def test_overflow_cells_are_errors_in_the_same_places(recomputed):
    trace, report = recomputed.trace, recomputed.report
    assert report.ok, report.summary()
    nonfinite = sum(int((~np.isfinite(g)).sum()) for g in trace.grad_W)
    assert nonfinite > 0 and report.errors_matched >= nonfinite


def _learning_rate_edited(folder):
    """xor's workbook with 0.37 typed into the learning-rate cell of the Settings sheet."""
    path = folder / "xor.xlsx"
    writer.write(engine.run(scenario_module.load("xor", steps=8)), path)
    book = openpyxl.load_workbook(path)
    assert book["Settings"]["A2"].value == "learning_rate"
    book["Settings"]["B2"].value = 0.37
    edited = folder / "edited.xlsx"
    book.save(edited)
    return edited


@pytest.mark.libreoffice(workbooks=_learning_rate_edited)
def test_changing_the_learning_rate_cell_recomputes_the_run(recomputed):
    original = engine.run(scenario_module.load("xor", steps=8))
    layout = writer.build_layout(original)
    changed = engine.run(scenario_module.load("xor", steps=8, overrides=["optimizer.lr=0.37"]))
    report = verify.compare(changed, layout, recomputed)
    assert report.ok, report.summary()
    assert not verify.compare(original, layout, recomputed).ok  # the numbers really moved


ACTIVATIONS_AND_LOSSES = [("sigmoid", "softmax", "softmax_ce"), ("relu", "sigmoid", "bce"),
                          ("leaky_relu", "identity", "mse"), ("elu", "tanh", "sse"),
                          ("silu", "gelu", "half_sse"), ("softplus", "identity", "half_sse")]


def _activation_and_loss_runs():
    traces = []
    for hidden, output, loss in ACTIVATIONS_AND_LOSSES:
        raw = copy.deepcopy(BASE)
        raw["layers"][0]["activation"] = hidden
        raw["layers"][1]["activation"] = output
        raw["loss"] = {"name": loss, "reduction": "mean"}
        if output == "softmax":
            raw["layers"][1]["units"] = 2
            raw["data"]["targets"] = [[1, 0], [0, 1], [1, 0]]
        if loss == "bce":
            raw["data"]["targets"] = [[1], [0], [1]]
        raw["training"]["batch"] = 2
        traces.append(build(raw))
    return traces


@pytest.mark.libreoffice(workbooks=_activation_and_loss_runs)
def test_every_activation_and_loss_verifies(recomputed):
    assert len(recomputed) == len(ACTIVATIONS_AND_LOSSES)
    for (hidden, output, loss), verified in zip(ACTIVATIONS_AND_LOSSES, recomputed):
        assert verified.report.ok, (hidden, output, loss, verified.report.summary())


@pytest.mark.libreoffice
def test_pdf_conversion(soffice, tmp_path):
    path = tmp_path / "run.xlsx"
    writer.write(engine.run(scenario_module.load("leaky-relu-explosion")), path)
    pdf = libreoffice.convert(path, "pdf", tmp_path / "pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000
    # many files in one LibreOffice process: a file it cannot read is named, the others converted
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"PK not a workbook")
    with pytest.raises(TracerError, match="could not convert broken.xlsx") as raised:
        libreoffice.convert_many([broken, path], "pdf", tmp_path / "many")
    assert "run.xlsx" not in str(raised.value) and (tmp_path / "many" / "run.pdf").exists()
    with pytest.raises(ValueError, match="different names"):
        libreoffice.convert_many([path, tmp_path / "pdf" / "run.xlsx"], "pdf", tmp_path / "many")


def test_sheet_structure(tmp_path):
    path = tmp_path / "run.xlsx"
    layout = writer.write(engine.run(scenario_module.load("sigmoid-vanishing")), path)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Trace", "Steps", "Diagnosis", "ChainRule", "Settings", "Data", "Scenario"]
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


def _subnormal_parameters():
    raw = copy.deepcopy(BASE)
    raw["layers"][1].update({"init": "explicit", "weights": [[1e-310], [2.5e-320], [0.5]], "bias": [5e-324]})
    return build(raw)


@pytest.mark.libreoffice(workbooks=_subnormal_parameters)
def test_values_that_cannot_be_plain_cells(recomputed):
    assert writer.constant(1e-310).startswith("=") and writer.constant(float("inf")) == "#NUM!"
    assert recomputed.trace.W[1][0, 1, 0] == 2.5e-320
    report = recomputed.report
    assert report.ok, report.summary()


@pytest.mark.libreoffice(workbooks=lambda: template("leaky-relu-explosion").window(5, 5))
def test_window_starting_from_non_finite_parameters(recomputed):
    trace, report = recomputed.trace, recomputed.report
    assert not np.isfinite(trace.W[0][0]).all()
    assert report.ok, report.summary()


def test_missing_libreoffice_says_how_to_install(monkeypatch, invoke):
    monkeypatch.setattr(libreoffice.shutil, "which", lambda name: None)
    result = invoke("verify", "xor", "--steps", "2")
    assert result.exit_code == 1 and "apt-get install -y libreoffice-calc-nogui" in result.output


def _normalised(normalize):
    raw = copy.deepcopy(BASE)
    raw["data"]["normalize"] = normalize
    return build(raw)


@pytest.mark.libreoffice(workbooks=_normalised)
@pytest.mark.parametrize("normalize", ["standard", "minmax"])
def test_normalised_inputs_are_computed_in_the_data_sheet(recomputed, base_raw, normalize, tmp_path):
    trace, report = recomputed.trace, recomputed.report
    x = np.array(base_raw["data"]["inputs"])
    expected = (x - x.mean(0)) / x.std(0) if normalize == "standard" else (x - x.min(0)) / (x.max(0) - x.min(0))
    np.testing.assert_allclose(trace.scenario.inputs, expected, rtol=1e-14)
    assert report.ok, report.summary()
    path = tmp_path / "n.xlsx"
    writer.write(trace, path)
    data = openpyxl.load_workbook(path)["Data"]
    assert str(data["E2"].value).startswith("=(B2-B$")   # x̂ from the raw cell and the statistics rows


def _residual_network():
    raw = copy.deepcopy(BASE)
    raw["data"]["inputs"] = [[0.5, -1.0, 0.3], [1.5, 0.2, -0.4], [0.1, 0.7, 0.9]]
    raw["layers"] = [{"units": 3, "activation": "tanh", "init": "xavier_uniform", "residual": True},
                     {"units": 3, "activation": "sigmoid", "init": "xavier_uniform", "residual": True},
                     {"units": 1, "activation": "identity", "init": "xavier_uniform"}]
    return build(raw)


@pytest.mark.libreoffice(workbooks=_residual_network)
def test_residual_network_verifies(recomputed):
    trace, report = recomputed.trace, recomputed.report
    assert not np.allclose(trace.a[1], trace.h[1])   # the skip adds a⁽¹⁾
    assert report.ok, report.summary()
