"""Stage-2 negatives that teach stance, not topic: near-topic condoning replies, the sources' switches, the mix in
the build report, and the sentence encoder they are found with (moved to modeling/)."""

from __future__ import annotations


def test_sentence_encoder_moved_and_still_imported_from_the_judges():
    from prosocial_lib.eval.judges import encoder as old
    from prosocial_lib.modeling import sentence_encoder as new
    from prosocial_lib.eval.judges.encoder import JudgeError, SentenceEncoder  # the judges' import keeps working

    assert SentenceEncoder is new.SentenceEncoder
    for name in ("ENCODER_NAME", "encoder_path", "text_key", "SentenceEncoderError"):
        assert getattr(old, name) is getattr(new, name)
    assert issubclass(JudgeError, ValueError) and issubclass(new.SentenceEncoderError, ValueError)
    assert old.context_text(["a", "b"], turns=1) == "b"  # the judges' own helpers stay there
