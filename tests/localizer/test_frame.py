import numpy as np
import pytest

from src.localizer.frame import frame_of


def test_square_image_fills_the_input_like_a_plain_resize():
    frame = frame_of((256, 256), (0.8, 0.8), 128)
    assert (frame.new_h, frame.new_w, frame.top, frame.left) == (128, 128, 0, 0)
    assert frame.mm_per_px == pytest.approx(256 * 0.8 / 128)
    assert frame.to_input(10.0, 20.0) == pytest.approx(((10.5) * 0.5 - 0.5, 20.5 * 0.5 - 0.5))


@pytest.mark.parametrize("shape,spacing", [((256, 192), (1.0, 1.0)), ((192, 256), (1.0, 1.0)),
                                           ((256, 256), (1.0, 0.75)), ((300, 200), (0.5, 0.9))])
def test_rectangular_and_anisotropic_images_keep_their_physical_aspect(shape, spacing):
    frame = frame_of(shape, spacing, 64)
    height, width = shape[0] * spacing[0], shape[1] * spacing[1]
    assert frame.new_h / frame.new_w == pytest.approx(height / width, rel=0.04)
    assert max(frame.new_h, frame.new_w) == 64
    # A 10 mm square on the image is a square on the input.
    x0, y0 = frame.to_input(50.0, 60.0)
    x1, y1 = frame.to_input(50.0 + 10 / spacing[1], 60.0 + 10 / spacing[0])
    assert (x1 - x0) == pytest.approx(y1 - y0, rel=0.04) == pytest.approx(10 / frame.mm_per_px, rel=0.04)
    # Round trip image -> input -> image, and placing an image puts its content inside the padded frame.
    assert frame.to_image(*frame.to_input(17.0, 33.0)) == pytest.approx((17.0, 33.0))
    image = np.ones(shape, np.float32)
    placed = frame.place(image)
    assert placed.shape == (64, 64) and placed.sum() == pytest.approx(frame.new_h * frame.new_w)
    assert placed[frame.top + frame.new_h // 2, frame.left + frame.new_w // 2] == 1.0


def test_heat_cells_map_back_to_image_pixels():
    frame = frame_of((200, 100), (1.0, 1.0), 64)  # 100 mm wide, 200 mm tall: a 32 px wide band in the middle
    assert (frame.new_h, frame.new_w, frame.left) == (64, 32, 16)
    x, y = frame.heat_to_image((16.0, 16.0))  # heat cell (y=16, x=16): input pixel 32.5, the centre
    assert (x, y) == pytest.approx(((32.5 - 16 + 0.5) * 100 / 32 - 0.5, (33.0) * 200 / 64 - 0.5))
