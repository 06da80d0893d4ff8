"""`lamina data build` shows its progress as plain lines when its output is not a terminal."""

from lamina.data import BuildConfig, build_corpus, folder_source

from .conftest import prose, write_docs


def test_data_build_off_a_terminal_prints_plain_lines_not_escape_codes(tmp_path, capsys):
    sources = [folder_source(write_docs(tmp_path / "src" / name, {f"{name}{i}.txt": prose(n + i) for i in range(5)}),
                             id=name, license="MIT") for name, n in (("alpha", 0), ("beta", 50))]
    build = build_corpus(sources, out=tmp_path / "c", config=BuildConfig(tokenizer="bpe:600"), progress=True)
    build.ledger.close()
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    lines = err.splitlines()
    assert lines[:2] == ["alpha: 0 documents", lines[1]] and lines[1].startswith("alpha: 5 documents, 0m")
    assert lines[2] == "beta: 0 documents" and lines[3].startswith("beta: 5 documents, 0m")
    assert lines[4] == "tokenizer: 0 texts read" and lines[5].startswith("tokenizer: ")
