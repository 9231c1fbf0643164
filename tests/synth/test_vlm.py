"""filter-vlm: the strict SCORE parser, the world mapping, a tiny random LLaVA run end to end, and the HTTP backend
against a scripted OpenAI-compatible server on loopback (timeouts, bad JSON, 500s, retries, what failed)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image

from unoflux.errors import UnofluxError
from unoflux.synth import Manifest, ReplyError, SynthConfig, parse_reply, read_manifest, run_synth, world_vlm_score
from unoflux.synth.prompts import prompt_record
from unoflux.synth.tiny import save_tiny_vlm
from unoflux.synth.vlm import vlm_prompt
from unoflux.world.render import render_scene
from unoflux.world.specs import TwoPanelSpec

GOOD = "1. Appearance: both are red stars.\n2. Details: the same emblem.\n3. Attributes: same.\nSCORE: 3"


# ------------------------------------------------------------------------------------------------- the parser
@pytest.mark.parametrize(
    "reply, score, rationale",
    [
        (GOOD, 3, GOOD.rsplit("\n", 1)[0]),
        ("Same subject.\n\n**SCORE: 4**\n", 4, "Same subject."),  # markdown emphasis and trailing blank lines
        ("score:0", 0, ""),
    ],
)
def test_parse_reads_the_last_score_line_and_keeps_the_reasoning(reply, score, rationale):
    assert parse_reply(reply) == (score, rationale)


@pytest.mark.parametrize(
    "reply, message",
    [
        ("They look alike, I would say 3.", "no 'SCORE: <0-4>' line"),
        ("", "no 'SCORE: <0-4>' line"),
        ("Reasoning.\nSCORE: 7", "SCORE 7 is outside 0-4"),
        ("Reasoning.\nSCORE: -1", "SCORE -1 is outside 0-4"),
        ("Reasoning.\nSCORE: 3.5", "SCORE '3.5' is not an integer"),
        ("Reasoning.\nSCORE: 3/4", "SCORE '3/4' is not an integer"),
        ("Reasoning.\nSCORE:", "SCORE '' is not an integer"),
        ("SCORE: 2\nOn reflection:\nSCORE: 3", "2 SCORE lines, not one"),
        ("SCORE: 2\nbecause the emblems differ", "not the reply's last line"),
    ],
)
def test_parse_refuses_missing_out_of_range_and_ambiguous_scores(reply, message):
    with pytest.raises(ReplyError, match=message):
        parse_reply(reply)


def test_the_prompt_asks_for_reasoning_on_each_aspect_and_a_score_line():
    prompt = vlm_prompt("a red striped star")
    for words in ("Appearance", "Details", "Attributes", "step by step", "SCORE: <0-4>", "a red striped star"):
        assert words in prompt
    assert prompt.splitlines()[-1] == "SCORE: <0-4>" and "asked for" not in vlm_prompt(None)


def test_world_mapping_counts_the_checks_passed():
    def truth(found=True, same_look=True, same_identity=True, look_ok=True):
        consistent = look_ok and same_look and same_identity
        return dict(found=found, same_look=same_look, same_identity=same_identity, consistent=consistent)

    assert world_vlm_score(truth(found=False, same_look=False, same_identity=False, look_ok=False)) == 0
    assert world_vlm_score(truth(same_look=False)) == 1  # different looks outrank a same-identity vote
    assert world_vlm_score(truth(same_identity=False)) == 2
    assert world_vlm_score(truth(look_ok=False)) == 3
    assert world_vlm_score(truth()) == 4


# ------------------------------------------------------------------------------------------------- the config
@pytest.mark.parametrize(
    "values, message",
    [
        ({"vlm": "gpt"}, "vlm 'gpt' is not one of: world, local, http"),
        ({"vlm": "local"}, "vlm_model None must be a transformers VLM folder"),
        ({"vlm": "http", "vlm_model": "m"}, "vlm_url None must be an http:// or https:// URL"),
        ({"vlm": "http", "vlm_url": "localhost:8000"}, "vlm_url 'localhost:8000' must be an http"),
        ({"vlm": "http", "vlm_url": "http://h/v1"}, "vlm_model None must name the served model"),
        ({"vlm_threshold": 5}, r"vlm_threshold 5 must be a number in \[0, 4\]"),
        ({"vlm_attempts": 0}, "vlm_attempts 0 must be an integer of at least 1"),
        ({"vlm_timeout": 0}, "vlm_timeout 0 must be a positive number"),
        ({"vlm_batch_size": 0}, "vlm_batch_size 0 must be a positive integer or null"),
        ({"vlm_api_key_env": "MY KEY"}, "vlm_api_key_env 'MY KEY' must be an environment variable's name"),
    ],
)
def test_bad_vlm_settings_are_one_sentence(tmp_path, values, message):
    with pytest.raises(UnofluxError, match=message):
        SynthConfig.from_dict({"output_dir": str(tmp_path), **values})


def test_vlm_defaults_follow_the_vocabulary(tmp_path):
    world = SynthConfig(output_dir=str(tmp_path / "world"))
    assert (world.vlm, world.vlm_threshold) == ("world", 4)
    (tmp_path / "dino").mkdir()
    (tmp_path / "dino" / "config.json").write_text("{}")
    own = SynthConfig(
        output_dir=str(tmp_path / "own"),
        subjects=["a mug"],
        scenes=["a", "b"],
        locator="panel",
        similarity="dinov2",
        dino=str(tmp_path / "dino"),
    )
    assert own.vlm is None and own.vlm_threshold is None  # no VLM filter unless one is named
    with pytest.raises(UnofluxError, match="stage filter-vlm needs a vlm backend for your own vocabulary"):
        run_synth(own, ["filter-vlm"])
    assert (
        SynthConfig(**{**own.to_dict(), "vlm": "http", "vlm_url": "http://h/v1", "vlm_model": "m"}).vlm_threshold == 3
    )


# ------------------------------------------------------------------------------------------------ the stage
def _survivors(config: SynthConfig, rejected: set[int] = frozenset(), truth: dict | None = None) -> None:
    """Stand in for split + filter-similarity: rendered crops of each prompt's two scenes as the pair, ``kept`` but
    for the indices in ``rejected`` (those the VLM must never see), each with ``truth``."""
    run_synth(config, ["prompts"])
    out = Path(config.output_dir)
    manifest = Manifest(out / "filtered.jsonl")
    (out / "pairs").mkdir(exist_ok=True)
    for index in range(config.count):
        record = prompt_record(config, index)
        spec = TwoPanelSpec.from_dict(record["spec"])
        paths = {}
        for name, scene in (("reference", spec.left), ("target_crop", spec.right)):
            paths[name] = f"pairs/{record['key']}_{name}.png"
            render_scene(scene, 32).image.save(out / paths[name])
        kept = index not in rejected
        extra = {"source": paths["reference"], "target": paths["target_crop"]}  # for the report's sheets and JSON
        manifest.append({**record, **paths, **extra, "score": 1.0 if kept else -1.0, "kept": kept, "truth": truth})


def test_local_backend_runs_a_tiny_random_llava_end_to_end(tmp_path):
    folder = save_tiny_vlm(tmp_path / "llava")
    config = SynthConfig(
        output_dir=str(tmp_path / "out"),
        count=3,
        batch_size=2,
        vlm="local",
        vlm_model=str(folder),
        vlm_max_new_tokens=8,
    )
    _survivors(config, rejected={1})
    run_synth(config, ["filter-vlm"])
    records = read_manifest(tmp_path / "out" / "vlm.jsonl")
    assert [r["index"] for r in records] == [0, 2]  # only what the similarity filter kept
    for record in records:  # random weights: random characters, never a score line, said clearly
        assert record["vlm_score"] is None and not record["kept"] and record["vlm"] == "local"
        assert record["error"] == (  # 8 random tokens without the end token: the budget is named
            "unparsable reply: the reply has no 'SCORE: <0-4>' line (it stopped at vlm_max_new_tokens = 8; raise it)"
        )
        assert record["vlm_attempts"] == 1  # greedy decoding: another try would give the same reply
        assert isinstance(record["rationale"], str) and 0 < len(record["rationale"]) <= 8  # the raw reply kept
    whole = (tmp_path / "out" / "vlm.jsonl").read_bytes()
    run_synth(config, ["filter-vlm"])  # finished: nothing loaded, nothing added
    assert (tmp_path / "out" / "vlm.jsonl").read_bytes() == whole


# ---------------------------------------------------------------------------------------- a scripted server
class ScriptedServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 that answers ``script`` in order (then its last
    entry): ``("sleep", s)`` answers after ``s`` seconds, ``("raw", status, body)`` sends ``body`` as is,
    ``("reply", text)`` a proper completion, ``("digest", s)`` after ``s`` seconds a score that depends only on the
    images sent (the same pair, the same reply). Every request body and its headers are kept in ``requests``."""

    def __init__(self, script: list[tuple]) -> None:
        self.script, self.requests = list(script), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, dict(self.headers), body))
                step = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                if step[0] == "sleep":
                    time.sleep(step[1])
                    step = ("reply", "late\nSCORE: 4")
                elif step[0] == "digest":
                    time.sleep(step[1])
                    digest = hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest()
                    step = ("reply", f"digest {digest[:8]}\nSCORE: {int(digest, 16) % 5}")
                status, raw = (step[1], step[2]) if step[0] == "raw" else (200, completion(step[1]))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except BrokenPipeError:  # the client gave up waiting (the timeout step)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str, finish: str = "stop") -> bytes:
    message = {"role": "assistant", "content": text}
    return json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": finish}]}).encode()


@pytest.fixture
def server_factory():
    servers = []

    def make(script):
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _http_config(tmp_path, url, **changes) -> SynthConfig:
    values = dict(
        output_dir=str(tmp_path / "out"), count=2, vlm_batch_size=1, vlm="http", vlm_url=url, vlm_model="qwen"
    )
    return SynthConfig(**{**values, "vlm_timeout": 0.3, "vlm_attempts": 4, "vlm_backoff": 0.01, **changes})


def test_http_backend_retries_a_timeout_bad_json_and_a_500_then_succeeds(tmp_path, server_factory):
    server = server_factory([("sleep", 0.8), ("raw", 200, b"{not json"), ("raw", 500, b"overloaded"), ("reply", GOOD)])
    config = _http_config(tmp_path, server.url)
    _survivors(config)
    run_synth(config, ["filter-vlm"])
    first, second = read_manifest(tmp_path / "out" / "vlm.jsonl")
    assert (first["vlm_score"], first["vlm_attempts"], first["error"], first["kept"]) == (3, 4, None, True)
    assert first["attempt_errors"] == [
        "attempt 1: no reply within 0.3 s",
        "attempt 2: the answer is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1)): b'{not json'",
        "attempt 3: HTTP 500 Internal Server Error: 'overloaded'",
    ]
    assert first["rationale"] == GOOD.rsplit("\n", 1)[0]
    assert (second["vlm_score"], second["vlm_attempts"], second["attempt_errors"]) == (
        3,
        1,
        [],
    )  # the script's last entry: a good reply

    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and "Authorization" not in headers  # no key unless one is named
    assert body["model"] == "qwen" and body["temperature"] == 0 and body["max_tokens"] == 512
    content = body["messages"][0]["content"]
    images = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    assert content[-1] == {"type": "text", "text": vlm_prompt(first["subject"])}
    for url, name in zip(images, ("reference", "target_crop"), strict=True):  # the crops themselves, as PNG
        assert url.startswith("data:image/png;base64,")
        sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        with Image.open(tmp_path / "out" / first[name]) as crop:
            assert sent.tobytes() == crop.convert("RGB").tobytes()


def test_http_backend_records_every_failed_attempt_and_the_stage_completes(tmp_path, server_factory, monkeypatch):
    server = server_factory(
        [("raw", 503, b"busy"), ("reply", "no score here"), ("raw", 200, b'{"choices": []}'), ("reply", "ok\nSCORE: 4")]
    )
    monkeypatch.setenv("TEST_VLM_KEY", "sekrit")
    config = _http_config(tmp_path, server.url, vlm_attempts=3, vlm_api_key_env="TEST_VLM_KEY")
    _survivors(config)
    run_synth(config, ["filter-vlm", "report"])
    failed, fine = read_manifest(tmp_path / "out" / "vlm.jsonl")
    assert failed["vlm_score"] is None and not failed["kept"] and failed["vlm_attempts"] == 3
    assert failed["error"] == (
        f"3 of 3 attempts failed at {server.url}/chat/completions; the last: the answer has no "
        "choices[0].message.content: b'{\"choices\": []}'"
    )
    assert failed["attempt_errors"] == [
        "attempt 1: HTTP 503 Service Unavailable: 'busy'",
        "attempt 2: the reply has no 'SCORE: <0-4>' line",
        "attempt 3: the answer has no choices[0].message.content: b'{\"choices\": []}'",
    ]
    assert (fine["vlm_score"], fine["kept"]) == (4, True)
    assert all(headers["Authorization"] == "Bearer sekrit" for _, headers, _ in server.requests)
    assert "sekrit" not in (tmp_path / "out" / "config.yaml").read_text()  # the key's name is kept, never the key

    # the report: the failed pair in the histogram's error slot, the good one the only training pair
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["histograms"]["vlm"]["kept"] == [0, 0, 0, 0, 1, 0]
    assert report["histograms"]["vlm"]["rejected"] == [0, 0, 0, 0, 0, 1] and report["vlm_errors"] == 1
    assert "consistent" not in report["histograms"]["vlm"]  # no world, no truth
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## VLM filter (`http`)" in text and "1 gave no score" in text and "](hist_vlm.png)" in text
    assert "exact checker" not in text and not (tmp_path / "out" / "yield_precision.png").exists()
    train = json.loads((tmp_path / "out" / "train_pairs.json").read_text())
    assert [t["image_tgt_path"] for t in train] == [fine["target"]]


def test_http_backend_stops_at_a_cut_reply_or_a_client_error_and_names_an_unset_key(
    tmp_path, server_factory, monkeypatch
):
    server = server_factory(
        [("raw", 200, completion("1. Appearance: the", "length")), ("raw", 404, b'{"error": "no"}')]
    )
    config = _http_config(tmp_path, server.url)
    _survivors(config)
    run_synth(config, ["filter-vlm"])
    cut, missing = read_manifest(tmp_path / "out" / "vlm.jsonl")
    assert len(server.requests) == 2 and cut["vlm_attempts"] == missing["vlm_attempts"] == 1  # neither would change
    assert cut["attempt_errors"] == [
        "attempt 1: the reply has no 'SCORE: <0-4>' line (it stopped at vlm_max_new_tokens = 512; raise it)"
    ]
    assert cut["rationale"] == "1. Appearance: the"  # the reply as far as it went
    assert missing["attempt_errors"] == ['attempt 1: HTTP 404 Not Found: \'{"error": "no"}\'']

    monkeypatch.delenv("UNSET_VLM_KEY", raising=False)
    unset = _http_config(
        tmp_path, server.url, count=1, output_dir=str(tmp_path / "other"), vlm_api_key_env="UNSET_VLM_KEY"
    )
    _survivors(unset)
    with pytest.raises(UnofluxError, match="vlm_api_key_env 'UNSET_VLM_KEY' names an environment variable that"):
        run_synth(unset, ["filter-vlm"])


def test_an_unreachable_endpoint_is_an_error_record_not_a_crash(tmp_path):
    config = _http_config(tmp_path, "http://127.0.0.1:9/v1", count=1, vlm_attempts=2)  # port 9: nothing listens
    _survivors(config)
    run_synth(config, ["filter-vlm"])
    (record,) = read_manifest(tmp_path / "out" / "vlm.jsonl")
    assert record["vlm_attempts"] == 2 and all("cannot reach" in e for e in record["attempt_errors"])
    assert record["error"].startswith("2 of 2 attempts failed at http://127.0.0.1:9/v1/chat/completions; the last")


def test_vlm_settings_may_change_until_the_vlm_has_scored(tmp_path):
    config = SynthConfig(output_dir=str(tmp_path / "out"), count=2)
    with pytest.raises(UnofluxError, match="pair '000000' in filtered.jsonl has no checker truth"):
        _survivors(config)
        run_synth(config, ["filter-vlm"])
    (tmp_path / "out" / "filtered.jsonl").unlink()
    _survivors(config, truth={"found": True, "same_look": False, "same_identity": True, "consistent": False})
    path = tmp_path / "out" / "config.yaml"
    old = {k: v for k, v in yaml.safe_load(path.read_text()).items() if not k.startswith("vlm")}
    path.write_text(yaml.safe_dump(old))  # as written before the VLM settings existed: their defaults
    run_synth(config, ["filter-vlm"])
    assert yaml.safe_load(path.read_text())["vlm"] == "world"  # written again, with them
    assert [r["vlm_score"] for r in read_manifest(tmp_path / "out" / "vlm.jsonl")] == [1, 1]  # looks differ
    other = config.replace(vlm="http", vlm_url="http://127.0.0.1:9/v1", vlm_model="m")
    with pytest.raises(UnofluxError, match="written with vlm = 'world', not 'http'; .* delete vlm.jsonl"):
        run_synth(other, ["filter-vlm"])
    (tmp_path / "out" / "vlm.jsonl").unlink()
    run_synth(other.replace(vlm_attempts=1), ["prompts"])  # no VLM records yet: another VLM may score them
    assert yaml.safe_load(path.read_text())["vlm"] == "http"
    with pytest.raises(UnofluxError, match="written with count = 2, not 3"):
        run_synth(config.replace(count=3), ["prompts"])
