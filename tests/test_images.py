"""attnviz.images: every file either becomes a loaded RGB image with the right
pixels, or is refused with one user-facing sentence — never anything else."""

from __future__ import annotations

import hashlib
import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from attnviz import images
from attnviz.images import MAX_BYTES, ImageRejected, image_digest, load_image, load_path
from tests.bad_images import corpus, gray16, rgb_gradient

CORPUS = corpus()
ACCEPTED = sorted(name for name, (_, expected) in CORPUS.items() if expected is None)
REJECTED = sorted(name for name, (_, expected) in CORPUS.items() if expected is not None)

WHITE = (255, 255, 255)


def close(pixel, expected, tol=3) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def check_rgb_png(img):
    assert np.array_equal(np.asarray(img), rgb_gradient())


def check_gray8(img):
    assert img.getpixel((5, 5)) == (77, 77, 77)


def check_bilevel(img):
    a = np.asarray(img)
    assert set(np.unique(a)) == {0, 255}
    assert img.getpixel((0, 0)) == (0, 0, 0) and img.getpixel((1, 0)) == WHITE


def check_gray16(img):
    # The full 16-bit range maps onto 8 bits: 65535 -> 255, 32768 -> 128, 257 -> 1.
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((8, 0)) == (128, 128, 128)
    assert img.getpixel((16, 0)) == (0, 0, 0)
    assert img.getpixel((24, 0)) == (1, 1, 1)
    assert gray16()[0, 8] == 32768  # the corpus still says what we think it says


def check_cmyk(img):
    assert close(img.getpixel((10, 10)), (0, 255, 255))


def check_first_frame_red(img):
    a = np.asarray(img)
    assert (a == (255, 0, 0)).all(axis=-1).all(), "not the first (red) frame"


def check_rgba(img):
    assert img.getpixel((0, 5)) == WHITE  # transparent red -> white, not red
    assert img.getpixel((20, 5)) == (0, 0, 255)
    assert close(img.getpixel((20, 0)), (127, 127, 127), tol=1)  # half alpha black over white


def check_la(img):
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((20, 0)) == (60, 60, 60)


def check_palette(img):
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((20, 0)) == (0, 255, 0)


def is_red(p) -> bool:
    return p[0] > 200 and p[1] < 80 and p[2] < 80


def check_orientation6(img):
    # Stored 40x24 with the marker at the top-left; orientation 6 means
    # "rotate 90 degrees clockwise", which carries the top-left to the top-right.
    assert img.size == (24, 40)
    assert is_red(img.getpixel((24 - 4, 4)))
    assert close(img.getpixel((4, 4)), WHITE, tol=10)
    assert close(img.getpixel((4, 36)), WHITE, tol=10)


def check_unrotated_marker(img):
    assert is_red(img.getpixel((4, 4)))


def check_small_gradient(img):
    assert np.array_equal(np.asarray(img), rgb_gradient(48, 32))


# name -> (expected size, pixel truth). Every accepted corpus case must be here.
TRUTH = {
    "rgb_png": ((64, 40), check_rgb_png),
    "gray8_png": ((20, 30), check_gray8),
    "bilevel_png": ((32, 32), check_bilevel),
    "gray16_png": ((32, 16), check_gray16),
    "cmyk_jpeg": ((32, 24), check_cmyk),
    "animated_gif": ((32, 32), check_first_frame_red),
    "animated_webp": ((32, 32), check_first_frame_red),
    "rgba_png": ((32, 32), check_rgba),
    "la_png": ((24, 24), check_la),
    "palette_transparency_png": ((32, 32), check_palette),
    "exif_orientation6_jpeg": ((24, 40), check_orientation6),
    "malformed_exif_jpeg": ((40, 24), check_unrotated_marker),
    "garbage_exif_jpeg": ((40, 24), check_unrotated_marker),
    "bmp": ((48, 32), check_small_gradient),
    "webp": ((48, 32), check_small_gradient),
}


def assert_one_sentence(message: str) -> None:
    assert message.endswith("."), message
    assert "\n" not in message, message
    assert 0 < len(message) < 200, message
    assert message[0].isupper(), message


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_cases_load_as_rgb_with_the_right_pixels(name, recwarn):
    data, _ = CORPUS[name]
    img = load_image(data)
    assert img.mode == "RGB"
    # Detached: a plain in-memory image, not a file-backed ImageFile.
    assert not isinstance(img, ImageFile.ImageFile)
    size, check = TRUTH[name]
    assert img.size == size
    check(img)
    # Pillow's "Corrupt EXIF" and similar warnings stay inside the loader.
    assert not [w for w in recwarn if "PIL" in (w.filename or "")]


@pytest.mark.parametrize("name", REJECTED)
def test_rejected_cases_raise_one_clear_sentence(name):
    data, expected = CORPUS[name]
    with pytest.raises(ImageRejected) as info:
        load_image(data)
    assert type(info.value) is ImageRejected
    message = str(info.value)
    assert expected in message
    assert_one_sentence(message)


def test_the_corpus_has_a_truth_for_every_accepted_case():
    assert set(ACCEPTED) <= set(TRUTH)
    assert {"animated_gif", "cmyk_jpeg", "gray16_png", "rgb_png", "bmp"} <= set(ACCEPTED)


def test_animated_corpus_files_really_are_animated():
    for name in ("animated_gif", "animated_webp"):
        if name in CORPUS:
            with Image.open(io.BytesIO(CORPUS[name][0])) as im:
                assert im.n_frames >= 2


def test_exif_parsing_that_throws_keeps_the_image_unrotated(monkeypatch):
    def broken(*args, **kwargs):
        raise SyntaxError("malformed EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    img = load_image(CORPUS["exif_orientation6_jpeg"][0])
    assert img.size == (40, 24)
    check_unrotated_marker(img)


VALUES = [0, 32768, 65535, 70000, -5]  # the last two lie outside 16 bits


def _rows(dtype) -> np.ndarray:
    return np.array([VALUES] * 16, dtype=dtype)  # [16, 5]


def _i16b() -> Image.Image:
    raw = np.clip(_rows(np.int64), 0, 65535).astype(">u2").tobytes()  # big-endian 16-bit
    return Image.frombytes("I;16B", (5, 16), raw)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Image.fromarray(_rows(np.int32)), id="I"),
        pytest.param(lambda: Image.fromarray(_rows(np.float32)), id="F"),
        pytest.param(_i16b, id="I;16B"),
    ],
)
def test_high_bit_modes_rescale_the_full_16_bit_range(make):
    out = images._to_rgb(make())
    assert out.mode == "RGB"
    # 70000 and -5 are outside 16 bits: clipped to 255 and 0.
    assert [out.getpixel((x, 0))[0] for x in range(5)] == [0, 128, 255, 255, 0]


def test_bytes_like_inputs_are_accepted():
    data = CORPUS["rgb_png"][0]
    assert load_image(bytearray(data)).size == (64, 40)
    assert load_image(memoryview(data)).size == (64, 40)


def test_max_bytes_is_adjustable():
    data = CORPUS["rgb_png"][0]
    with pytest.raises(ImageRejected, match="too large"):
        load_image(data, max_bytes=len(data) - 1)
    assert load_image(data, max_bytes=len(data)).size == (64, 40)


def test_fuzzed_files_never_raise_anything_but_image_rejected():
    rng = np.random.default_rng(1234)
    names = ("rgb_png", "gray16_png", "animated_gif", "cmyk_jpeg", "bmp", "rgba_png")
    seeds = [CORPUS[name][0] for name in names]
    for data in seeds:
        for _ in range(40):
            mutated = bytearray(data)
            for pos in rng.integers(0, len(mutated), size=rng.integers(1, 6)):
                mutated[pos] = rng.integers(0, 256)
            try:
                img = load_image(bytes(mutated))
            except ImageRejected as exc:
                assert_one_sentence(str(exc))
            else:
                assert img.mode == "RGB"


def test_image_digest_is_sha256_hex():
    assert image_digest(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert image_digest(CORPUS["rgb_png"][0]) != image_digest(CORPUS["bmp"][0])


# --- load_path ---------------------------------------------------------------------


def test_load_path_reads_a_good_file(tmp_path):
    path = tmp_path / "picture.jpeg"  # the name lies; the content (PNG) decides
    path.write_bytes(CORPUS["rgb_png"][0])
    img = load_path(path)
    assert img.mode == "RGB" and img.size == (64, 40)
    assert load_path(str(path)).size == (64, 40)


def test_load_path_rejects_a_huge_file_without_reading_it_all(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:  # sparse: 1 GiB on paper, a few bytes on disk
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ImageRejected, match="too large") as info:
            load_path(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_one_sentence(str(info.value))
    assert peak < 3 * MAX_BYTES  # it read about the cap, not the gigabyte


def test_load_path_reads_at_most_one_byte_past_the_cap(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(CORPUS["rgb_png"][0] + bytes(5000))
    cap = 1000
    consumed = []
    real_open = open

    class CountingReader:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            chunk = self._f.read(n)
            consumed.append(len(chunk))
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def counting_open(*args, **kwargs):
        return CountingReader(real_open(*args, **kwargs))

    # load_path looks `open` up in its module globals first, so this shadows the builtin.
    monkeypatch.setattr(images, "open", counting_open, raising=False)
    with pytest.raises(ImageRejected, match="too large"):
        load_path(path, max_bytes=cap)
    assert sum(consumed) == cap + 1


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_load_path_on_unreadable_paths_is_a_rejection(tmp_path, kind):
    path = tmp_path / "nope.png" if kind == "missing" else tmp_path
    with pytest.raises(ImageRejected, match="could not be read") as info:
        load_path(path)
    assert_one_sentence(str(info.value))


def test_corpus_is_fresh_and_cheap():
    first, second = corpus(), corpus()
    first.pop("rgb_png")
    assert "rgb_png" in second
