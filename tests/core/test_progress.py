from src.core.progress import stamp, tagged


def test_tagged_marks_another_process_line_after_its_time_stamp():
    line = stamp("attn_resnext fold 0 epoch 1: train_loss 0.9\n")
    out = tagged(line, "attn_resnext")
    assert out[:20] == line[:20] and out[20:].startswith("[attn_resnext] attn_resnext fold 0 epoch 1") and out.endswith("\n")
    assert tagged("Traceback (most recent call last):\n", "cnn_lstm") == "[cnn_lstm] Traceback (most recent call last):\n"
    assert tagged("2026\n", "x") == "[x] 2026\n"
