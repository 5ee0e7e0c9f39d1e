"""Where records come from (`prefstudy.sources`): JSON arrays and JSON lines, tables, gzip,
names that say nothing, folders, and URLs (served from the loopback address)."""

import functools
import gzip
import http.server
import json
import threading

import pandas as pd
import pytest

from prefstudy.data import DataError, SkippedPairsWarning, load_any
from prefstudy.sources import kind_of

GOOD = [{"prompt": f"q{i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"}
        for i in range(3)]


def write_json(path, value, *, lines=False, zipped=False):
    text = "\n".join(json.dumps(r) for r in value) if lines else json.dumps(value, indent=1)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if zipped else data)
    return path


def test_a_json_array_file_loads_one_pair_per_element(tmp_path):
    pairs = load_any(write_json(tmp_path / "pairs.json", GOOD))
    assert [p.prompt for p in pairs] == ["q0", "q1", "q2"] and pairs.layout == "plain"
    # a file of JSON lines named .json (what `Dataset.to_json` writes) is read as lines
    assert len(load_any(write_json(tmp_path / "lines.json", GOOD, lines=True))) == 3


def test_a_bad_element_of_a_json_array_names_the_file_and_the_item(tmp_path):
    bad = [GOOD[0], {"prompt": "q", "chosen": 3, "rejected": "r"}]
    with pytest.raises(DataError, match=r"bad\.json item:2: field 'chosen' must be str"):
        load_any(write_json(tmp_path / "bad.json", bad))
    (tmp_path / "broken.json").write_text('[\n {"prompt": "q",\n  "chosen": }\n]')
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON at column 13") as caught:
        load_any(tmp_path / "broken.json")
    assert "\n" not in str(caught.value)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match=r"empty\.json: empty: no records"):
        load_any(tmp_path / "empty.json")
    (tmp_path / "object.json").write_text('{\n "data": []\n}')
    with pytest.raises(DataError, match=r"object\.json: one JSON object over several lines, "
                                        r"not records"):
        load_any(tmp_path / "object.json")


def test_a_skipped_element_is_counted_and_the_valid_ones_kept(tmp_path):
    rows = [*GOOD, {"prompt": "q", "chosen": "same", "rejected": "same"}, GOOD[0]]
    with pytest.warns(SkippedPairsWarning, match=r"2 of 5 records \(identical answers: 1, "
                                                 r"duplicate: 1\)"):
        pairs = load_any(write_json(tmp_path / "p.json", rows))
    assert len(pairs) == 3
    assert pairs.skip_counts().to_dict() == {"identical answers": 1, "duplicate": 1}
    assert [str(s) for s in pairs.skipped][0].endswith("p.json item:4: chosen is identical to "
                                                       "rejected")


@pytest.mark.parametrize("name, lines", [("a.json.gz", False), ("a.jsonl.gz", True),
                                         ("a.json.gz", True)])
def test_gzip_of_any_json_layout(tmp_path, name, lines):
    assert len(load_any(write_json(tmp_path / name, GOOD, lines=lines, zipped=True))) == 3


def test_csv_gz_and_a_name_that_says_nothing_are_read_by_their_bytes(tmp_path):
    frame = pd.DataFrame(GOOD)
    frame.to_csv(tmp_path / "t.csv.gz", index=False)
    assert [p.chosen for p in load_any(tmp_path / "t.csv.gz")] == frame.chosen.tolist()
    frame.to_parquet(tmp_path / "export.bin")
    write_json(tmp_path / "array.txt", GOOD)
    write_json(tmp_path / "lines.data", GOOD, lines=True)
    assert [kind_of(tmp_path / n) for n in ("export.bin", "array.txt", "lines.data")] == [
        "parquet", "array", "lines"]
    for name in ("export.bin", "array.txt", "lines.data"):
        assert len(load_any(tmp_path / name)) == 3


def test_a_damaged_gzip_file_is_one_line(tmp_path):
    (tmp_path / "d.json.gz").write_bytes(gzip.compress(json.dumps(GOOD).encode())[:30])
    with pytest.raises(DataError, match=r"d\.json\.gz: damaged gzip file"):
        load_any(tmp_path / "d.json.gz")


def test_a_folder_reads_json_arrays_lines_and_tables_together(tmp_path):
    write_json(tmp_path / "a.json", GOOD[:1])
    write_json(tmp_path / "b.jsonl", GOOD[1:2], lines=True)
    pd.DataFrame(GOOD[2:]).to_csv(tmp_path / "c.csv", index=False)
    (tmp_path / "notes.txt").write_text("not pairs")
    (tmp_path / "dataset_info.json").write_text('{\n  "description": "my pairs"\n}')
    with pytest.warns(SkippedPairsWarning, match="2 folder entries"):
        pairs = load_any(tmp_path)
    assert [p.prompt for p in pairs] == ["q0", "q1", "q2"]
    assert "one JSON object over several lines (metadata?)" in str(pairs.skipped[0])


def test_a_one_line_json_file_is_one_record_and_a_csv_may_start_with_a_bom(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(GOOD[0]) + "\n")
    assert [p.prompt for p in load_any(tmp_path / "one.json")] == ["q0"]
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + pd.DataFrame(GOOD).to_csv(
        index=False).encode())
    assert len(load_any(tmp_path / "bom.csv")) == 3


@pytest.fixture
def server(tmp_path):
    """An HTTP server on the loopback address serving `tmp_path / "site"`; yields its base URL
    and a function that stops it."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            stopped.append(True)

    yield f"http://127.0.0.1:{httpd.server_address[1]}", site, stop
    stop()


def test_a_url_is_fetched_once_into_the_cache_and_read_as_a_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFSTUDY_CACHE", str(tmp_path / "cache"))
    base, site, stop = server
    write_json(site / "annotations.json", GOOD)
    url = f"{base}/annotations.json"
    assert [p.prompt for p in load_any(url)] == ["q0", "q1", "q2"]
    cached = list((tmp_path / "cache" / "downloads").rglob("annotations.json"))
    assert len(cached) == 1
    stop()  # the second read needs no server: the cached copy is read
    assert len(load_any(url)) == 3


def test_a_fetched_file_that_is_not_pairs_is_not_kept(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFSTUDY_CACHE", str(tmp_path / "cache"))
    base, site, _ = server
    (site / "page.json").write_text("<html>not found</html>")
    with pytest.raises(DataError, match=r"page\.json:1: invalid JSON"):
        load_any(f"{base}/page.json")
    write_json(site / "page.json", GOOD)  # fixed at the source: read afresh, not the bad copy
    assert len(load_any(f"{base}/page.json")) == 3


def test_a_url_that_cannot_be_fetched_is_one_line_naming_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFSTUDY_CACHE", str(tmp_path / "cache"))
    base, _, stop = server
    with pytest.raises(DataError, match=r"/missing\.json: could not be fetched \(HTTP 404"):
        load_any(f"{base}/missing.json")
    stop()
    with pytest.raises(DataError, match=r"could not be fetched") as caught:
        load_any(f"{base}/gone.json")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "cache" / "downloads").exists() or not any(
        (tmp_path / "cache" / "downloads").rglob("*.json"))
