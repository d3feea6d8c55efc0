"""DailyDialog: natural text (detokenised), types validated with DataFormatError, every distributed layout read
(issue cases dailydialog-tokenized and dailydialog-types, and their class)."""

import re
import zipfile

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from realworld import REAL, validate_cli, write_jsonl

from prosocial_lib.data import DataFormatError, DataSkipWarning, last_load_report, load_casual
from prosocial_lib.data import casual as casmod
from prosocial_lib.data.daily_dialog import detokenize

TOKENISED = re.compile(r" [,.?!;:]| [’'] |^ | $")
DIALOGS = [["Hey , Tom , are you free for lunch on Friday ? ", " I ’ m not sure . Let me check my calendar . "],
           ["Excuse me , where is the nearest post office ? ",
            (" Go straight two blocks , then turn left . You can ’ t miss it . "), " Thanks a lot ! "]]
NATURAL = ["I’m not sure. Let me check my calendar.", "Go straight two blocks, then turn left. You can’t miss it.",
           "Thanks a lot!"]


# ---------------------------------------------------------------------- detokenisation
def test_case_tokenised_hub_text_becomes_natural():
    ds = load_casual(str(REAL / "dd_tokenized.jsonl"), "train")
    assert ds[0]["history"] == ["Hey, Tom, are you free for lunch on Friday?"]
    assert ds[0]["response"] == "I’m not sure. Let me check my calendar."
    assert ds[3]["response"] == "Go straight two blocks, then turn left. You can’t miss it."
    assert not [t for h, r in zip(ds["history"], ds["response"]) for t in h + [r] if TOKENISED.search(t)]


@pytest.mark.parametrize("tokenised, natural", [
    ("I don ' t know . It ' s fine , isn't it ? ", "I don't know. It's fine, isn't it?"),
    ("We ’ ll see ; you ’ re late ! ", "We’ll see; you’re late!"),
    ('He said " hello " to me .', 'He said "hello" to me.'),
    ("That costs $ 20 ( about 15 pounds ) .", "That costs $20 (about 15 pounds)."),
    ("Hello, world. I can't.", "Hello, world. I can't."),  # natural text stays as it is
    ("Tom ' s car & mine", "Tom's car & mine"),
    ("   ", ""),
])
def test_detokenize(tokenised, natural):
    assert detokenize(tokenised) == natural


# ---------------------------------------------------------------------- types
@pytest.mark.parametrize("line, row, problem", [
    ('{"dialog": "This is conversation number 0 as one string. How are you?"}', 1,
     "field 'dialog': expected a list of utterances (strings), got str"),
    ('{"dialog": null}', 1, "field 'dialog': expected a list of utterances (strings), got null"),
    ('{"dialog": [1, {"a": 2}, null, ["x"]]}', 1, "field 'dialog': utterance 1: expected a string, got int 1"),
    ('{"dialog": ["a", "b"]', 1, "not valid JSON"),
    ('{"dialog": {"0": "Hi", "1": "Hello"}}', 1, "field 'dialog': expected a list of utterances"),  # new instances
    ('{"dialog": ["Hi .", null]}', 1, "utterance 2: expected a string, got null"),
    ('{"dialogue": [{"text": "Hi ."}, {"emotion": "no_emotion"}]}', 1,
     "field 'dialogue': utterance 2: expected an object with a string 'text'"),
    ('{"utterances": ["Hi .", "Hello ."]}', 1, "missing column 'dialog'"),
])
def test_bad_records_name_file_row_and_field(tmp_path, line, row, problem):
    path = tmp_path / "train.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataFormatError) as err:
        load_casual(str(tmp_path), "train")
    assert err.value.file == str(path) and err.value.row == row and problem in str(err.value)


def test_case_string_dialog_is_not_split_into_letters(tmp_path, capsys):
    for split in ("train", "validation"):
        write_jsonl(tmp_path / f"{split}.jsonl", [{"dialog": f"This is conversation number {i} as one string. "
                                                             "How are you?"} for i in range(20)])
    with pytest.raises(DataFormatError, match="row 1, field 'dialog'"):
        load_casual(str(tmp_path), "train")
    with pytest.warns(DataSkipWarning):
        ds = load_casual(str(tmp_path), "train", strict=False)
    assert len(ds) == 0  # not 730 one-letter examples
    assert any("0 (history, response) examples in split 'train'" in p for p in last_load_report().problems)
    assert last_load_report().skipped == {"wrong type (dialog)": 20}
    rc, out = validate_cli(capsys, tmp_path / "train.jsonl", "casual")
    assert rc == 1 and f"{tmp_path}/train.jsonl, row 1, field 'dialog'" in out


def test_case_null_dialog_skips_one_conversation_when_not_strict(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"dialog": ["Hi.", "Hello."]}, {"dialog": None}])
    with pytest.raises(DataFormatError, match="row 2, field 'dialog'"):
        load_casual(str(tmp_path), "train")
    with pytest.warns(DataSkipWarning, match="wrong type"):
        assert load_casual(str(tmp_path), "train", strict=False)["response"] == ["Hello."]


def test_hub_records_are_validated_too(monkeypatch):
    monkeypatch.setattr(casmod, "_load_daily_dialog_hub",
                        lambda split: datasets.Dataset.from_list([{"dialog": "one string"}]))
    with pytest.raises(DataFormatError, match=r"daily_dialog \[train\], row 1, field 'dialog'"):
        load_casual("daily_dialog", "train")


# ---------------------------------------------------------------------- every distributed layout
def _eou(dialogs):
    return "".join(" __eou__ ".join(u.strip() for u in d) + " __eou__\n" for d in dialogs)


def _write_layout(tmp_path, layout):
    if layout == "original_folder":
        (tmp_path / "train").mkdir()
        (tmp_path / "train" / "dialogues_train.txt").write_text(_eou(DIALOGS))
        (tmp_path / "train" / "dialogues_act_train.txt").write_text("2 1\n2 3 4\n")
        return tmp_path
    if layout in ("split_zip", "release_zip"):
        split_zip = tmp_path / "train.zip"
        with zipfile.ZipFile(split_zip, "w") as zf:
            zf.writestr("train/dialogues_train.txt", _eou(DIALOGS))
            zf.writestr("train/dialogues_emotion_train.txt", "0 0\n0 0 4\n")
        if layout == "split_zip":
            return split_zip
        release = tmp_path / "ijcnlp_dailydialog.zip"
        with zipfile.ZipFile(release, "w") as zf:
            zf.write(split_zip, "ijcnlp_dailydialog/train.zip")
            zf.writestr("ijcnlp_dailydialog/dialogues_text.txt", _eou(DIALOGS))
        return release
    if layout == "hub_parquet":
        (tmp_path / "default" / "train").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([{"dialog": d, "act": [1] * len(d)} for d in DIALOGS]),
                       tmp_path / "default" / "train" / "0000.parquet")
        return tmp_path
    if layout == "parlai":
        write_jsonl(tmp_path / "train.json", [{"fold": "train", "topic": "ordinary_life", "dialogue": [
            {"text": u.replace("’", "'"), "act": "inform", "emotion": "no_emotion"} for u in d]} for d in DIALOGS])
        return tmp_path
    write_jsonl(tmp_path / "train.jsonl", [{"dialog": d} for d in DIALOGS])  # hub JSON export
    return tmp_path


@pytest.mark.parametrize("layout", ["original_folder", "split_zip", "release_zip", "hub_parquet", "parlai",
                                    "hub_jsonl"])
def test_every_layout_gives_the_same_natural_examples(tmp_path, layout):
    ds = load_casual(str(_write_layout(tmp_path, layout)), "train")
    expected = NATURAL if layout != "parlai" else [t.replace("’", "'") for t in NATURAL]
    assert ds["response"] == expected
    assert ds[0]["history"] == ["Hey, Tom, are you free for lunch on Friday?"]


def test_zip_without_the_split_says_which_files_it_wanted(tmp_path):
    archive = _write_layout(tmp_path, "split_zip")
    with pytest.raises(DataFormatError, match="no rows"):
        load_casual(str(archive), "test")


def test_folder_without_the_split_is_file_not_found(tmp_path):
    _write_layout(tmp_path, "hub_jsonl")
    with pytest.raises(FileNotFoundError, match="dialogues_test.txt"):
        load_casual(str(tmp_path), "test")


def test_eou_line_without_markers_is_a_malformed_row(tmp_path):
    (tmp_path / "dialogues_train.txt").write_text(_eou(DIALOGS) + "just one line without markers\n")
    with pytest.raises(DataFormatError, match="row 3: expected utterances each ended by '__eou__'"):
        load_casual(str(tmp_path), "train")
