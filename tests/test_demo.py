"""The Gradio demo: its handlers, its command line, concurrent clients and a real browser.

The browser test starts ``pixelkit demo`` in a subprocess on a free port and drives
Debian's Chromium through Playwright; screenshots go to ``test-artifacts/demo/`` (or
``$PIXELKIT_ARTIFACTS/demo``). ``PIXELKIT_DEMO_CKPT=path`` runs it against another
checkpoint (e.g. the quickstart's) instead of a random tiny one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from _servers import free_port, start, stop, wait_until_serving
from PIL import Image

from pixelkit import PixelLLM, PixelLLMConfig, Predictor
from pixelkit.checkpoint import save_model
from pixelkit.data import catalog
from pixelkit.decoding import DecodeOptions
from pixelkit.demo import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> PixelLLM:
    torch.manual_seed(0)
    return PixelLLM(PixelLLMConfig.from_name("tiny")).eval()


@pytest.fixture(scope="module")
def predictor(model) -> Predictor:
    return Predictor(model, device="cpu", decode_options=DecodeOptions(max_new_tokens=8),
                     info={"checkpoint": "/x/tiny.ckpt", "stage": "test"})


@pytest.fixture(scope="module")
def handlers(predictor):
    return app.DemoHandlers(predictor)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[tuple[Path, str]]:
    return app.shapes_examples(tmp_path_factory.mktemp("examples"), n=3)


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8))


def _editor(image: Image.Image, strokes: list[tuple[tuple[int, int, int, int], str]]) -> dict:
    """An ImageEditor value: the image as background, rectangles of colour as one layer."""
    bg = np.asarray(image.convert("RGBA"))
    layer = np.zeros_like(bg)
    for (x0, y0, x1, y1), colour in strokes:
        rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
        layer[y0:y1, x0:x1] = [*rgb, 255]
    return {"background": bg, "layers": [layer], "composite": bg}


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (100, 40), (40, 130)])
def test_caption_outputs(handlers, predictor, size) -> None:
    image = _noise(*size)
    frames = list(handlers.caption(image, "trace"))
    assert len(frames) == 1
    text, trace, view, result = frames[0]
    # One coloured entity per word (spaces between them are uncoloured), a colour per word.
    words = [e for e in text["value"] if e[1] is not None]
    assert [w for w, _ in words] == result["words"] == view.words
    assert set(text["color_map"]) == {str(i) for i in range(len(words))}
    assert all(c.startswith("#") and len(c) == 7 for c in text["color_map"].values())
    # The trace keeps the image's aspect ratio (upscaled so the short side is 384 px)...
    W, H = size
    s = 384 / min(W, H)
    assert trace.size == (round(W * s), round(H * s))
    # ... differs from the plain upscaled image, and the words are where the predictor says.
    plain = image.resize(trace.size, Image.NEAREST)
    assert np.abs(np.asarray(trace, int) - np.asarray(plain, int)).sum() > 0
    direct = predictor.set_image(image).caption()
    assert result == direct.to_dict()
    assert all(0 <= x <= W and 0 <= y <= H for x, y in result["points"])


def test_animation_grows_word_by_word(handlers, monkeypatch) -> None:
    monkeypatch.setattr(app, "ANIMATION_FPS", 1e6)
    frames = list(handlers.caption(_noise(64, 64), "trace", animate=True))
    n = len(frames[-1][2].words)
    assert len(frames) == n
    assert [len([e for e in f[0]["value"] if e[1] is not None]) for f in frames] == \
        list(range(1, n)) + [n]


def test_selecting_a_word_highlights_it(handlers) -> None:
    _, trace, view, _ = next(handlers.caption(_noise(64, 64)))
    picked = handlers.select_word(view, 1)
    assert picked.size == trace.size
    assert not np.array_equal(np.asarray(picked), np.asarray(trace))
    assert handlers.select_word(None, 1) is None


def test_attention_switch_shows_where_the_model_looks(handlers) -> None:
    _, _, view, _ = next(handlers.caption(_noise(64, 64)))
    assert handlers.attention_picture(view, show=False) is None   # the switch is off
    assert handlers.attention_picture(None) is None               # nothing captioned yet
    maps = handlers.word_maps(view)
    assert maps.words == view.words                               # the caption's own words
    assert handlers.word_maps(view) is maps                       # computed once per caption
    every = handlers.attention_picture(view)                      # no word selected: all
    one = handlers.attention_picture(view, index=1)               # the selected word
    assert one.size == (384, 384) and every.size != one.size
    assert not np.array_equal(np.asarray(one), np.asarray(handlers.attention_picture(view, index=0)))
    # A region caption's maps come from its own prompt (the box), not the whole image's.
    editor = _editor(_noise(64, 64), [((10, 10, 30, 30), app.POSITIVE)])
    _, _, region, out = next(handlers.region_caption(editor))
    assert handlers.word_maps(region).words == out["words"]


def _drag(editor: dict, p0: tuple[float, float], p1: tuple[float, float], radius: float,
          colour: str = app.POSITIVE) -> dict:
    """A brush drag from p0 to p1 as the editor records it: discs stamped along the line."""
    layer = editor["layers"][0]
    h, w = layer.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    for t in np.linspace(0, 1, 200):
        cx, cy = p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1])
        layer[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2] = [*rgb, 255]
    return editor


@pytest.mark.parametrize("radius", [1.5, 3.0, 6.0])
def test_a_dragged_stroke_is_a_box(handlers, radius) -> None:
    image = _noise(100, 60)
    # Dragging from one corner of the object to the other draws a diagonal line; its extent,
    # less the brush radius, is the box whatever the brush size.
    editor = _drag(_editor(image, []), (20, 10), (70, 50), radius)
    img, box, points, labels = app.strokes_to_prompt(editor, "box")
    assert img.size == (100, 60) and points is None and labels is None
    assert np.allclose(box, (20, 10, 70, 50), atol=1.5), box
    _, _, view, result = next(handlers.region_caption(editor, "box"))
    assert result["prompt"]["box"] == list(box)
    assert view.prompt_box == box


def test_clicks_are_points_with_labels(handlers, predictor) -> None:
    image = _noise(80, 80)
    editor = _editor(image, [((10, 10, 14, 14), app.POSITIVE), ((50, 60, 54, 64), app.NEGATIVE)])
    _, box, points, labels = app.strokes_to_prompt(editor, "points")
    assert box is None
    assert points == [(12.0, 12.0), (52.0, 62.0)] and labels == [1, 0]
    _, _, _, result = next(handlers.region_caption(editor, app._MODE_POINTS))
    direct = predictor.set_image(image).caption(points=points, labels=labels)
    assert result["text"] == direct.text and result["points"] == direct.to_dict()["points"]


def test_refer(handlers, predictor, examples) -> None:
    path, expression = examples[0]
    drawn, out = handlers.refer(str(path), expression)
    direct = predictor.set_image(path).refer(expression)
    assert out == direct.to_dict()
    assert drawn.size == (384, 384) and "mask_area" not in out


@pytest.mark.parametrize("location", [{"format": "text"}, {"format": "tokens"},
                                      {"format": "regions"}])
def test_the_four_tabs_on_formats_that_write_boxes(location) -> None:
    """A `text`, a `tokens` and a `regions` model (location.format) through every tab's
    handler: the same results as the Predictor's, and an answer without a box that parses
    shows no box."""
    torch.manual_seed(0)
    model = PixelLLM(PixelLLMConfig.from_name("tiny", {"location": location})).eval()
    predictor = Predictor(model, device="cpu", decode_options=DecodeOptions(max_new_tokens=12))
    h = app.DemoHandlers(predictor)
    image = _noise(100, 60)
    text, trace, view, result = next(h.caption(image, "trace"))
    # (json: a word outside any located phrase has a NaN point, and NaN != NaN)
    assert json.dumps(result) == json.dumps(predictor.set_image(image).caption().to_dict())
    assert trace.size == (640, 384)
    editor = _editor(image, [((10, 10, 40, 40), app.POSITIVE)])
    *_, region = next(h.region_caption(editor, "box"))
    assert region["text"] == predictor.set_image(image).caption(box=(10, 10, 39, 39)).text
    drawn, out = h.refer(image, "the red circle")
    assert out == predictor.set_image(image).refer("the red circle").to_dict()
    assert (out["box"] is None) == (out["error"] is not None) and drawn.size == (640, 384)
    (shown, annotations), rows, dense = h.dense_caption(image, 0.0, 3)
    assert len(rows) == len(dense["boxes"]) <= 3


def test_refer_with_sam_shows_the_mask(model, tiny_sam) -> None:
    h = app.DemoHandlers(Predictor(model, device="cpu", sam=tiny_sam))
    image = _noise(90, 50)
    drawn, out = h.refer(image, "the red circle")
    mask = h.predictor.set_image(image).segment("the red circle").mask
    assert out["mask_area"] == int(mask.sum())
    assert drawn.size[0] / drawn.size[1] == pytest.approx(90 / 50, rel=0.02)


def test_dense_caption(handlers, predictor) -> None:
    image = _noise(120, 64)
    (shown, annotations), rows, out = handlers.dense_caption(image, 0.0, 4)
    direct = predictor.set_image(image).dense_caption(4, 0.0)
    assert out == direct.to_dict()
    assert len(annotations) == len(rows) == len(direct.boxes) <= 4
    s = 384 / 64
    assert shown.size == (round(120 * s), 384)
    for ((x0, y0, x1, y1), label), box, cap in zip(annotations, direct.boxes, direct.captions):
        assert cap in label
        assert abs(x0 - box[0] * s) <= 1 and abs(y1 - box[3] * s) <= 1
        assert 0 <= x0 < x1 <= shown.width and 0 <= y0 < y1 <= shown.height
    # Nothing passes a threshold of 1.
    assert handlers.dense_caption(image, 1.0, 4)[1] == []


def test_bad_input_is_a_message(handlers, tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(app.DemoError, match="notes.txt is not an image"):
        next(handlers.caption(str(text)))
    with pytest.raises(app.DemoError, match="no image"):
        next(handlers.caption(None))
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)
    small_limit = app.DemoHandlers(handlers.predictor, max_pixels=10_000)
    with pytest.raises(app.DemoError, match=r"big.png is 300x200 px .* up to 0.0 MP"):
        small_limit.refer(str(big), "x")
    with pytest.raises(app.DemoError, match="type an expression"):
        handlers.refer(_noise(32, 32), "  ")
    with pytest.raises(app.DemoError, match="nothing drawn"):
        next(handlers.region_caption(_editor(_noise(32, 32), []), "box"))
    with pytest.raises(app.DemoError, match="no image in the editor"):
        next(handlers.region_caption(None, "box"))
    # Through the app, the same errors reach the browser as gr.Error messages.
    import gradio as gr

    with pytest.raises(gr.Error, match="not an image"):
        app._user_errors(handlers.refer)(str(text), "x")


def test_examples_are_the_shapes_val_split(tmp_path) -> None:
    from pixelkit.data.synth import synthesize

    synthesize(tmp_path / "world", num_images=10, progress=False)
    examples = app.shapes_examples(tmp_path / "ex", n=2, num_images=10)
    layout = catalog.get("shapes/val")
    val = sorted(layout.image_dir(tmp_path / "world").glob("*.png"))
    refs = json.loads(layout.annotation("refer", tmp_path / "world").read_text())
    expressions = {e["caption"] for e in refs["images"]}
    for (path, expression), truth in zip(examples, val):
        assert path.name == truth.name and path.read_bytes() == truth.read_bytes()
        assert expression in expressions


def test_header_names_the_checkpoint_and_its_data() -> None:
    md = app.header({"checkpoint": "outputs/q/checkpoints/pixelllm.ckpt", "stage": "all",
                     "trained_on": ["trace:/data/ln_train.jsonl", "refer"],
                     "world": "shapes (64 px)",
                     "metrics": {"refer.p_at_0.5": 0.9221, "densecap.mAP": 0.5}})
    for part in ("pixelllm.ckpt", "all", "trace: ln_train.jsonl, refer", "shapes (64 px)", "0.922",
                 "0.500"):
        assert part in md


def test_without_a_checkpoint_it_says_how_to_make_one(tmp_path, capsys) -> None:
    from pixelkit.cli import main

    assert main(["demo", "--ckpt", str(tmp_path / "none.ckpt")]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "make quickstart" in err


# --------------------------------------------------------------------------------------------
# A served app: concurrent API clients
# --------------------------------------------------------------------------------------------


def test_eight_concurrent_clients(predictor, examples, tmp_path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    demo, _ = app.build_app(predictor, examples, max_pixels=100 * 100)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        jobs = [(examples[i % 3][0], "trace" if i % 2 else "caption") for i in range(4)]
        refers = [examples[i % 3] for i in range(4)]

        def caption(job):
            path, task = job
            out = Client(url, verbose=False).predict(handle_file(str(path)), task, False,
                                                     api_name="/caption")
            return out[-1]  # the JSON result

        def refer(job):
            path, expression = job
            return Client(url, verbose=False).predict(handle_file(str(path)), expression,
                                                      api_name="/refer")[-1]

        with ThreadPoolExecutor(8) as pool:
            captions = [pool.submit(caption, j) for j in jobs]
            boxes = [pool.submit(refer, j) for j in refers]
            captions = [f.result(timeout=300) for f in captions]
            boxes = [f.result(timeout=300) for f in boxes]
        # Bad uploads come back as messages (the browser shows them as such), not tracebacks.
        (tmp_path / "notes.png").write_text("not an image")
        Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="notes.png is not an image"):
            client.predict(handle_file(str(tmp_path / "notes.png")), "trace", False,
                           api_name="/caption")
        with pytest.raises(AppError, match="big.png is 300x200 px"):
            client.predict(handle_file(str(tmp_path / "big.png")), "x", api_name="/refer")
    finally:
        demo.close()
    for (path, task), got in zip(jobs, captions):
        assert got == predictor.set_image(path).caption(task=task).to_dict()
    for (path, expression), got in zip(refers, boxes):
        assert got == predictor.set_image(path).refer(expression).to_dict()


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------


def _chromium() -> str:
    """Debian's Chromium, installed by scripts/ensure_system_deps.sh when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure_system_deps.sh")], check=True)
        found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Chromium is not installed and could not be installed: run "
                    "`apt-get install chromium` (scripts/ensure_system_deps.sh)")
    return found


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """[start, end) of the longest run of True."""
    best, start = (0, 0), None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            best = max(best, (start, i), key=lambda r: r[1] - r[0])
            start = None
    return best


def _image_rect(shot: bytes) -> tuple[int, int, int, int]:
    """Where the picture sits inside a screenshot of the editor, ``(x0, y0, x1, y1)``.

    The editor draws it on a white canvas: the longest runs of columns and of rows that are
    mostly not white are the picture's (the component's 1-px border and the sparse toolbar
    icons are not).
    """
    a = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), int)
    ink = (a < 235).any(-1)
    x0, x1 = _longest_run(ink.mean(0) > 0.5)
    y0, y1 = _longest_run(ink[:, x0:x1].mean(1) > 0.9)
    return x0, y0, x1, y1


def _editor_picture(page) -> np.ndarray:
    """The picture inside the region editor, as pixels (the canvas, cut to the image)."""
    shot = page.locator("#editor").screenshot()
    x0, y0, x1, y1 = _image_rect(shot)
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), int)[y0:y1, x0:x1]


def _editor_image_rect(page, changed_from: np.ndarray | None = None,
                       limit_s: float = 300.0) -> tuple[int, int, int, int]:
    """Where the editor shows its picture, once it shows it: polled, not a fixed sleep.

    Ready means a square picture of a plausible size, the same in two screenshots in a
    row, and (``changed_from``) different from the previous example's picture.
    """
    deadline, last = time.monotonic() + limit_s, None
    while time.monotonic() < deadline:
        shot = page.locator("#editor").screenshot()
        rect = _image_rect(shot)
        w, h = rect[2] - rect[0], rect[3] - rect[1]
        ready = w > 64 and abs(w - h) <= 3 and rect == last
        if ready and changed_from is not None:
            pic = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), int)
            pic = pic[rect[1]:rect[3], rect[0]:rect[2]]
            ready = pic.shape != changed_from.shape or np.abs(pic - changed_from).mean() > 1
        if ready:
            return rect
        last = rect
        page.wait_for_timeout(200)  # one poll interval, not a guess at readiness
    pytest.fail(f"the region editor did not show its picture within {limit_s:.0f} s")


def _json(page, elem_id: str) -> dict:
    """A gr.JSON output's value, read from its text (line numbers are CSS, not text)."""
    text = page.locator(f"#{elem_id}").inner_text()
    return json.loads(text[text.index("{"):])


def _fetch_image(page, selector: str) -> Image.Image:
    src = page.locator(selector).first.get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


@pytest.mark.slow
def test_browser_end_to_end(model, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    ckpt = os.environ.get("PIXELKIT_DEMO_CKPT")
    if not ckpt:
        ckpt = save_model(model, tmp_path / "tiny.ckpt", stage="test (random tiny)",
                          trained_on=["nothing"])
    shots = Path(os.environ.get("PIXELKIT_ARTIFACTS", ROOT / "test-artifacts")) / "demo"
    shots.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), tmp_path / "demo.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    server = start([sys.executable, "-m", "pixelkit", "demo", "--ckpt", str(ckpt),
                    "--port", str(port), "--examples", "3"], log, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, server, log)  # by readiness, however loaded the machine is
        # The example images are the shapes world's val split; their first object's box.
        from pixelkit.data.synth import split_images

        (_, scene), (_, scene2) = split_images(tmp_path / "val", "val", n=2)
        expression = scene.referring_expressions()[0] or next(
            e for e in scene.referring_expressions() if e)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#caption-btn")
            expect(page.get_by_text(Path(ckpt).name).first).to_be_visible()  # the header
            # Pick the first example (its expression fills the Refer box).
            page.locator("#examples tbody tr").nth(0).click()
            page.wait_for_selector("#image img")
            source = _fetch_image(page, "#image img")
            assert source.size == (64, 64)

            # 1. Caption + trace: coloured words, a trace image unlike the input.
            page.click("#caption-btn")
            page.wait_for_selector("#caption-text .token[style*='background-color']")
            page.wait_for_selector("#caption-img img")
            colours = page.locator("#caption-text .token[style*='background-color']")
            assert colours.count() >= 2
            styles = {colours.nth(i).get_attribute("style") for i in range(min(colours.count(), 4))}
            assert len(styles) >= 2  # different words, different colours
            trace = _fetch_image(page, "#caption-img img")
            plain = np.asarray(source.resize(trace.size, Image.NEAREST), int)
            assert np.abs(np.asarray(trace, int) - plain).mean() > 0.5
            page.screenshot(path=str(shots / "1_caption_trace.png"), full_page=True)
            before = page.locator("#caption-img img").first.get_attribute("src")
            colours.nth(1).click()  # select a word: its location is highlighted
            expect(page.locator("#caption-img img").first).not_to_have_attribute("src", before)
            page.screenshot(path=str(shots / "1b_word_selected.png"), full_page=True)
            # The switch: every word's attention map appears; a clicked word shows its own.
            assert page.locator("#caption-attn img").count() == 0
            page.locator("#attention input").check()
            page.wait_for_selector("#caption-attn img")
            maps = _fetch_image(page, "#caption-attn img")
            assert maps.width > 384 and np.asarray(maps, int).std() > 5  # a picture, not blank
            every = page.locator("#caption-attn img").first.get_attribute("src")
            colours.nth(2).click()
            expect(page.locator("#caption-attn img").first).not_to_have_attribute("src", every)
            assert _fetch_image(page, "#caption-attn img").size == (384, 384)
            page.screenshot(path=str(shots / "1c_attention.png"), full_page=True)
            page.locator("#attention input").uncheck()
            expect(page.locator("#caption-attn")).to_be_hidden()

            # 2. Region caption: drag a box around the first object.
            page.get_by_role("tab", name="Region caption").click()
            editor = page.locator("#editor canvas").first
            rect = _editor_image_rect(page)
            ebox = page.locator("#editor").bounding_box()
            sx = (rect[2] - rect[0]) / 64
            sy = (rect[3] - rect[1]) / 64

            def screen(x: float, y: float) -> tuple[float, float]:
                return ebox["x"] + rect[0] + x * sx, ebox["y"] + rect[1] + y * sy

            x0, y0, x1, y1 = scene.objects[0].gt_box
            assert editor.is_visible()
            page.mouse.move(*screen(x0, y0))
            page.mouse.down()
            for t in np.linspace(0, 1, 12)[1:]:
                page.mouse.move(*screen(x0 + t * (x1 - x0), y0 + t * (y1 - y0)))
            page.mouse.up()
            editor_shot = _editor_picture(page)
            page.click("#region-btn")
            page.wait_for_selector("#region-text .token[style*='background-color']")
            page.wait_for_selector("#region-img img")
            got = _json(page, "region-json")
            assert np.allclose(got["prompt"]["box"], (x0, y0, x1, y1), atol=3.0), got["prompt"]
            region = _fetch_image(page, "#region-img img")
            assert np.abs(np.asarray(region, int) - np.asarray(
                source.resize(region.size, Image.NEAREST), int)).mean() > 0.5
            page.screenshot(path=str(shots / "2_region_box.png"), full_page=True)

            # ... and click a point on the object instead (a fresh example clears the strokes).
            page.locator("#examples tbody tr").nth(1).click()
            page.get_by_text("points (click").click()
            cx, cy = np.mean(np.reshape(scene2.objects[0].gt_box, (2, 2)), axis=0)
            rect = _editor_image_rect(page, changed_from=editor_shot)
            ebox = page.locator("#editor").bounding_box()
            sx, sy = (rect[2] - rect[0]) / 64, (rect[3] - rect[1]) / 64
            page.mouse.click(*screen(cx, cy))
            page.click("#region-btn")
            expect(page.locator("#region-json")).to_contain_text("labels")
            got = _json(page, "region-json")
            assert got["prompt"]["labels"] == [1]
            assert np.allclose(got["prompt"]["points"][0], (cx, cy), atol=3.0), got["prompt"]
            page.screenshot(path=str(shots / "2b_region_point.png"), full_page=True)

            # 3. Refer: the example's expression, a box in the image.
            page.locator("#examples tbody tr").nth(0).click()
            page.get_by_role("tab", name="Refer").click()
            expect(page.locator("#expression textarea")).to_have_value(expression)
            page.click("#refer-btn")
            page.wait_for_selector("#refer-img img")
            expect(page.locator("#refer-json")).to_contain_text("score")
            box = _json(page, "refer-json")["box"]
            assert 0 <= box[0] <= box[2] <= 64 and 0 <= box[1] <= box[3] <= 64
            page.screenshot(path=str(shots / "3_refer.png"), full_page=True)

            # 4. Dense captions: threshold 0 so even a random model shows regions.
            page.get_by_role("tab", name="Dense captions").click()
            number = page.locator("#threshold input[type='number']")
            number.fill("0")
            number.press("Enter")
            page.click("#dense-btn")
            expect(page.locator("#dense-json")).to_contain_text("captions")
            page.wait_for_selector("#dense-img img")
            page.screenshot(path=str(shots / "4_dense.png"), full_page=True)
            dense = _json(page, "dense-json")
            assert 1 <= len(dense["captions"]) <= 10
            for caption in dense["captions"][:3]:  # each region's caption is in the table
                expect(page.locator("#dense-table")).to_contain_text(caption[:40])
            browser.close()
    finally:
        stop(server)
    # SIGTERM ends the demo as Ctrl-C does: its example folder is gone with it.
    assert not list(Path(tempfile.gettempdir()).glob(f"pixelkit-demo-{server.pid}-*"))
