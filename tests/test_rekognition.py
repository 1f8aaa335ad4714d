"""The emotion-engine interface and the Amazon Rekognition engine, with botocore's Stubber:
no network and no AWS account. Responses follow the documented shapes of DetectFaces,
SearchFacesByImage, IndexFaces and DescribeCollection."""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

boto3 = pytest.importorskip("boto3")
from botocore.stub import ANY, Stubber  # noqa: E402

from moodlens.engines import OwnEngine, make_engine  # noqa: E402
from moodlens.engines.base import EmotionEngine, EngineError  # noqa: E402
from moodlens.engines.crops import face_crop, face_jpeg, padded_region  # noqa: E402
from moodlens.engines.rekognition import COLUMNS, RekognitionEngine, emotions_of  # noqa: E402
from moodlens.errors import EnrolmentError  # noqa: E402
from moodlens.store import Store  # noqa: E402

CLIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video" / "pyfeat" / "WolfgangLanger_Pexels.mp4"
needs_clip = pytest.mark.skipif(not CLIP.exists(), reason=f"sample clip {CLIP} not found")


def _box(left, top, width=0.5, height=0.5):
    return {"Width": width, "Height": height, "Left": left, "Top": top}


def _face(left=0.25, top=0.25, emotions=None):
    """One FaceDetail as DetectFaces returns it with Attributes=["ALL"] (emotions may be absent)."""
    d = {"BoundingBox": _box(left, top), "Confidence": 99.9,
         "Landmarks": [{"Type": "eyeLeft", "X": 0.4, "Y": 0.4}], "Pose": {"Roll": 1.0, "Yaw": -2.0, "Pitch": 3.0},
         "Quality": {"Brightness": 80.0, "Sharpness": 90.0}, "AgeRange": {"Low": 25, "High": 35},
         "Smile": {"Value": True, "Confidence": 95.0}, "EyesOpen": {"Value": True, "Confidence": 98.0}}
    if emotions is not None:
        d["Emotions"] = [{"Type": t, "Confidence": c} for t, c in emotions.items()]
    return d


HAPPY = {"HAPPY": 81.5, "CALM": 9.25, "CONFUSED": 4.0, "SURPRISED": 2.0, "SAD": 1.0, "ANGRY": 0.5,
         "DISGUSTED": 0.5, "FEAR": 0.75, "UNKNOWN": 0.5}


def _detect(*faces):
    return {"FaceDetails": list(faces), "OrientationCorrection": "ROTATE_0"}


@pytest.fixture
def stubbed(monkeypatch):
    """A real Rekognition client (fake keys, fixed region) behind a Stubber; nothing leaves."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.client("rekognition", region_name="eu-west-1", aws_access_key_id="AKIDEXAMPLE",
                          aws_secret_access_key="secret")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def _engine(client, **kw) -> RekognitionEngine:
    return RekognitionEngine(client, max_in_flight=1, sleep=lambda s: None, **kw)


# -- the interface -------------------------------------------------------------------------
def test_both_engines_satisfy_the_interface(stubbed):
    client, _ = stubbed
    rk = _engine(client)
    assert isinstance(rk, EmotionEngine) and rk.name == "rekognition" and rk.remote
    assert "confused" in rk.columns and "unknown" in rk.columns and "contempt" not in rk.columns
    assert rk.version.startswith("amazon-rekognition:DetectFaces@") and rk.version.endswith("/eu-west-1")
    own = make_engine("own")
    assert isinstance(own, EmotionEngine) and own.name == "own" and not own.remote
    with pytest.raises(EngineError, match="own, rekognition"):
        make_engine("clarifai")


@needs_clip
def test_own_model_through_the_interface_gives_the_same_rows():
    """FaceStage scoring through OwnEngine (the default) gives bit-identical rows to the classifier
    called directly, as FaceStage did before engines existed."""
    from moodlens import media
    from moodlens.faces.emotion import default_classifier
    from moodlens.faces.track import Tracker
    from moodlens.pipeline import FaceStage, Options, grey_crops, observation_rows

    clf = default_classifier()
    frame = next(iter(media.iter_frames(CLIP, fps=1)))
    default_stage = FaceStage(clf, Options())
    explicit = FaceStage(clf, Options(), OwnEngine(clf))
    a, b = default_stage(frame), explicit(frame)
    assert len(a) == 1 and isinstance(default_stage.engine, OwnEngine)
    direct = clf.predict(grey_crops(a.crops))
    assert np.array_equal(a.emotions, direct) and np.array_equal(b.emotions, direct)
    a = a.with_(track_ids=np.asarray(Tracker().update(a, None), np.int64))
    rows = observation_rows("clip", frame, a)
    assert "contempt" in rows[0] and "confused" not in rows[0]  # the own model's rows are as they were
    assert rows[0]["happiness"] == float(direct[0][1]) * 100.0


# -- crops ---------------------------------------------------------------------------------
def test_crop_is_padded_square_inside_the_image_and_knows_the_face_centre():
    img = np.zeros((360, 640, 3), np.uint8)
    assert padded_region((300, 100, 100, 100), img.shape) == (250, 50, 450, 250)
    assert padded_region((0, 0, 100, 100), img.shape) == (0, 0, 150, 150)  # clipped at the corner
    crop, centre = face_crop(img, (300, 100, 100, 100))
    assert crop.shape[:2] == (200, 200) and centre == (0.5, 0.5)
    small, _ = face_crop(img, (300, 100, 20, 20))  # a 20 px face is enlarged 4x: 40 px -> 160 px
    assert small.shape[:2] == (160, 160)
    data, _ = face_jpeg(img, (300, 100, 100, 100))
    assert data[:2] == b"\xff\xd8"


# -- DetectFaces ---------------------------------------------------------------------------
def test_emotion_types_fill_the_seed_columns_and_the_nearest_face_wins():
    resp = _detect(_face(0.0, 0.0, {"SAD": 90.0}), _face(0.25, 0.25, HAPPY))
    row = emotions_of(resp, (0.5, 0.5))
    by = dict(zip(COLUMNS, row.tolist()))
    assert by["happiness"] == pytest.approx(0.815) and by["neutral"] == pytest.approx(0.0925)
    assert by["confused"] == pytest.approx(0.04) and by["unknown"] == pytest.approx(0.005)
    assert dict(zip(COLUMNS, emotions_of(resp, (0.2, 0.2))))["sadness"] == pytest.approx(0.9)
    assert np.isnan(emotions_of(_detect(), (0.5, 0.5))).all()


def test_detect_faces_call_and_a_face_without_emotions(stubbed):
    client, stub = stubbed
    stub.add_response("detect_faces", _detect(_face(emotions=HAPPY)),
                      {"Image": {"Bytes": ANY}, "Attributes": ["ALL"]})
    stub.add_response("detect_faces", _detect(_face()))  # documented: Emotions only with ALL; absent here
    eng = _engine(client)
    img = np.full((360, 640, 3), 128, np.uint8)
    from moodlens.types import Faces
    faces = Faces(boxes=np.array([[300, 100, 100, 100], [50, 50, 60, 60]], np.float32),
                  landmarks=np.zeros((2, 5, 2), np.float32), scores=np.ones(2, np.float32))
    scores = eng.score(img, faces)
    assert scores.shape == (2, len(COLUMNS))
    assert scores[0][COLUMNS.index("happiness")] == pytest.approx(0.815)
    assert np.isnan(scores[1]).all()
    assert eng.stats()["engine_calls"] == 2 and eng.stats()["engine_unscored"] == 1
    assert eng.stats()["engine_bytes"] > 0


def test_throttling_is_retried_then_succeeds(stubbed):
    client, stub = stubbed
    stub.add_client_error("detect_faces", "ThrottlingException", "Rate exceeded", 400)
    stub.add_response("detect_faces", _detect(_face(emotions=HAPPY)))
    waits = []
    eng = RekognitionEngine(client, sleep=waits.append, backoff_s=1.0)
    row = eng.detect(b"\xff\xd8jpeg")
    assert row[COLUMNS.index("happiness")] == pytest.approx(0.815)
    assert eng.throttled == 1 and len(waits) == 1 and 0.5 <= waits[0] <= 1.0


def test_throttling_that_does_not_stop_is_one_line(stubbed):
    client, stub = stubbed
    for _ in range(3):
        stub.add_client_error("detect_faces", "ProvisionedThroughputExceededException", "slow down", 400)
    eng = RekognitionEngine(client, sleep=lambda s: None, throttle_retries=2)
    with pytest.raises(EngineError, match="throttled DetectFaces|throttled detect_faces") as e:
        eng.detect(b"x")
    assert "\n" not in str(e.value)


def test_image_over_the_size_limit_is_one_line(stubbed):
    client, stub = stubbed
    stub.add_client_error("detect_faces", "ImageTooLargeException", "Image size is too large.", 400)
    with pytest.raises(EngineError, match="over its image size limit") as e:
        _engine(client).detect(b"x" * 100, what="a face crop of 100 bytes")
    assert "a face crop of 100 bytes" in str(e.value) and "\n" not in str(e.value)


def test_max_calls_is_a_hard_cap(stubbed):
    client, stub = stubbed
    stub.add_response("detect_faces", _detect(_face(emotions=HAPPY)))
    eng = _engine(client, max_calls=1)
    eng.detect(b"x")
    with pytest.raises(EngineError, match="--max-calls 1 reached"):
        eng.detect(b"x")


# -- collections ---------------------------------------------------------------------------
def test_search_faces_by_image_names_the_best_match(stubbed):
    client, stub = stubbed
    match = {"Similarity": 97.5, "Face": {"FaceId": "11111111-2222-3333-4444-555555555555", "ExternalImageId": "alice",
                                          "ImageId": "66666666-7777-8888-9999-000000000000", "Confidence": 99.9,
                                          "BoundingBox": _box(0.2, 0.2)}}
    stub.add_response("search_faces_by_image",
                      {"SearchedFaceBoundingBox": _box(0.25, 0.25), "SearchedFaceConfidence": 99.8,
                       "FaceMatches": [match], "FaceModelVersion": "7.0"},
                      {"CollectionId": "panel", "Image": {"Bytes": b"jpg"}, "FaceMatchThreshold": 70.0, "MaxFaces": 1})
    stub.add_response("search_faces_by_image", {"FaceMatches": [], "FaceModelVersion": "7.0",
                                                "SearchedFaceBoundingBox": _box(0.25, 0.25),
                                                "SearchedFaceConfidence": 99.0})
    stub.add_client_error("search_faces_by_image", "InvalidParameterException",
                          "There are no faces in the image. Should be at least 1.", 400)
    eng = _engine(client)
    assert eng.search("panel", b"jpg", 70) == ("alice", 97.5)
    assert eng.search("panel", b"jpg", 70) is None
    assert eng.search("panel", b"jpg", 70) is None  # no face in the crop: no name, not an error


def test_missing_collection_is_one_line(stubbed):
    client, stub = stubbed
    stub.add_client_error("describe_collection", "ResourceNotFoundException",
                          "The collection id: nope does not exist", 400)
    with pytest.raises(EngineError, match="collection 'nope' not found in eu-west-1") as e:
        _engine(client).check_collection("nope")
    assert "\n" not in str(e.value)


def test_index_faces_uses_the_person_as_external_image_id(stubbed):
    client, stub = stubbed
    record = {"Face": {"FaceId": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "BoundingBox": _box(0.25, 0.25),
                       "ImageId": "ffffffff-0000-1111-2222-333333333333", "ExternalImageId": "bob",
                       "Confidence": 99.9},
              "FaceDetail": _face()}
    stub.add_response("index_faces", {"FaceRecords": [record], "FaceModelVersion": "7.0", "UnindexedFaces": []},
                      {"CollectionId": "panel", "Image": {"Bytes": b"jpg"}, "ExternalImageId": "bob", "MaxFaces": 1,
                       "QualityFilter": "AUTO", "DetectionAttributes": ["DEFAULT"]})
    stub.add_response("index_faces", {"FaceRecords": [], "FaceModelVersion": "7.0",
                                      "UnindexedFaces": [{"Reasons": ["LOW_SHARPNESS"], "FaceDetail": _face()}]})
    eng = _engine(client)
    assert eng.index("panel", b"jpg", "bob") == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    with pytest.raises(EnrolmentError, match="LOW_SHARPNESS"):
        eng.index("panel", b"jpg", "bob")


# -- the whole pipeline --------------------------------------------------------------------
FPS = 0.5


@needs_clip
def test_analysis_with_rekognition_rows_reports_and_a_failure(stubbed, tmp_path):
    """Rows carry Rekognition's columns (confused, unknown; contempt empty) and name the engine;
    a later failure (an image over the limit) marks only that analysis failed."""
    from moodlens.engines.plan import plan
    from moodlens.pipeline import analyze, load_analysis

    client, stub = stubbed
    n = plan(CLIP, FPS, measure_bytes=False).calls
    assert n >= 5
    stub.add_response("detect_faces", _detect(_face(emotions=HAPPY)))
    stub.add_response("detect_faces", _detect(_face()))  # one face without emotions
    for _ in range(n - 2):
        stub.add_response("detect_faces", _detect(_face(emotions=HAPPY)))
    db = f"sqlite:///{tmp_path / 'm.db'}"
    a = analyze(CLIP, fps=FPS, db=db, out=tmp_path / "out", engine=_engine(client))
    assert a.status == "complete" and a.n_observations == n
    assert a.models["engine"] == "rekognition" and a.models["emotion"].startswith("amazon-rekognition")
    assert a.timings["engine_calls"] == n and a.timings["engine_unscored"] == 1
    with open(a.outputs["records.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-1] == "engine" and {r["engine"] for r in rows} == {"rekognition"}
    happy = [r for r in rows if r["happy"]]
    assert len(happy) == n - 1 and all(r["contempt"] == "" for r in rows)
    assert float(happy[0]["happy"]) == pytest.approx(81.5) and float(happy[0]["confused"]) == pytest.approx(4.0)
    assert float(happy[0]["unknown"]) == pytest.approx(0.5) and float(happy[0]["calm"]) == pytest.approx(9.25)
    (summ,) = list(csv.DictReader(open(a.outputs["summary.csv"], newline="")))
    assert float(summ["happy_mean"]) == pytest.approx(81.5) and summ["contempt_mean"] == ""
    assert float(summ["confused_mean"]) == pytest.approx(4.0) and int(summ["observations"]) == n
    jl = (tmp_path / "out" / "records.jsonl").read_text().splitlines()[0]
    assert '"engine":"rekognition"' in jl
    from moodlens.reports.html import write_report
    html = write_report(load_analysis(a.id, db), tmp_path / "report.html").read_text()
    assert "amazon-rekognition" in html
    names = set(re.findall(r'"name":\s*"([a-z ]+)"', html))  # the timeline's and people's traces
    assert {"confused", "unknown", "happy", "calm"} <= names and "contempt" not in names, names
    assert "<th style='color:#d37295'>confused</th>" in html and ">contempt</th>" not in html
    assert "<em>contempt</em> it does not score" in html

    stub.add_response("detect_faces", _detect(_face(emotions=HAPPY)))
    stub.add_client_error("detect_faces", "ImageTooLargeException", "Image size is too large.", 400)
    from moodlens.errors import MoodlensError
    with pytest.raises(MoodlensError, match="over its image size limit"):
        analyze(CLIP, fps=FPS, db=db, engine=RekognitionEngine(client, max_in_flight=1, sleep=lambda s: None))
    store = Store(db)
    failed = store.analyses()[0]
    assert failed.status == "failed" and "image size limit" in failed.error
    assert store.analysis(a.id).status == "complete" and load_analysis(a.id, db).n_observations == n
    stub._queue.clear()  # the failed run's pool was cancelled; left-over stubs are not an error here


def test_ray_is_refused_with_rekognition(stubbed):
    from moodlens.errors import OptionError
    from moodlens.pipeline import analyze

    client, _ = stubbed
    with pytest.raises(OptionError, match="--executor local only"):
        analyze("nothing.mp4", engine=_engine(client), executor="ray")


# -- the command ---------------------------------------------------------------------------
def _cli(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "moodlens.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@needs_clip
def test_cli_dry_run_max_calls_and_no_credentials(tmp_path):
    import json

    r = _cli("analyze", str(CLIP), "--engine", "rekognition", "--dry-run", "--json", "--fps", str(FPS))
    assert r.returncode == 0, r.stderr
    (p,) = json.loads(r.stdout)
    assert p["calls"] >= p["frames"] == math.ceil(19.7 * FPS) and p["usd"] == pytest.approx(p["calls"] * 0.001)
    assert 0 < p["crop_bytes"] and 0 < p["frame_bytes"]
    db = f"sqlite:///{tmp_path / 'm.db'}"
    r = _cli("analyze", str(CLIP), "--engine", "rekognition", "--max-calls", "3", "--fps", str(FPS), "--db", db)
    assert r.returncode == 2 and "over" not in r.stdout and "--max-calls 3" in r.stderr
    assert not (tmp_path / "m.db").exists()  # refused before anything was written
    r = _cli("analyze", str(CLIP), "--engine", "rekognition", "--fps", str(FPS), "--db", db)
    assert r.returncode == 2 and "no AWS credentials" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("analyze", str(CLIP), "--dry-run")
    assert r.returncode == 2 and "--engine rekognition" in r.stderr


@needs_clip
def test_collection_names_tracks_by_search_faces_by_image(stubbed, tmp_path):
    """--collection with Rekognition: the collection is checked first, then each track's best crop
    is searched once with FaceMatchThreshold = match_threshold."""
    from moodlens.engines.plan import plan
    from moodlens.pipeline import analyze

    client, stub = stubbed
    n = plan(CLIP, FPS, measure_bytes=False).calls
    stub.add_response("describe_collection", {"FaceCount": 2, "FaceModelVersion": "7.0",
                                              "CollectionARN": "arn:aws:rekognition:eu-west-1:1:collection/panel"},
                      {"CollectionId": "panel"})
    for _ in range(n):
        stub.add_response("detect_faces", _detect(_face(emotions=HAPPY)))
    stub.add_response("search_faces_by_image",
                      {"FaceMatches": [{"Similarity": 91.0, "Face": {"FaceId": "f1", "ExternalImageId": "wolfgang"}}]},
                      {"CollectionId": "panel", "Image": {"Bytes": ANY}, "FaceMatchThreshold": 80.0, "MaxFaces": 1})
    a = analyze(CLIP, fps=FPS, db=f"sqlite:///{tmp_path / 'm.db'}", engine=_engine(client), collection="panel",
                match_threshold=80.0)
    assert a.n_tracks == 1 and {o["person"] for o in a.iter_observations()} == {"wolfgang"}
    assert a.models["identity"] == "amazon-rekognition:SearchFacesByImage/panel"


@needs_clip
def test_enroll_indexes_the_face_crop_as_the_person(stubbed, tmp_path):
    import cv2

    from moodlens import media
    from moodlens.engines.rekognition import enroll

    client, stub = stubbed
    frame = next(iter(media.iter_frames(CLIP, fps=1)))
    photo = tmp_path / "wolfgang.jpg"
    cv2.imwrite(str(photo), frame.image)
    (tmp_path / "empty.jpg").write_bytes(cv2.imencode(".jpg", np.full((200, 200, 3), 90, np.uint8))[1].tobytes())
    with pytest.raises(EnrolmentError, match="no face found"):  # checked locally: nothing is called
        enroll(_engine(client), "panel", "wolfgang", [photo, tmp_path / "empty.jpg"])
    stub.add_response("describe_collection", {"FaceCount": 0}, {"CollectionId": "panel"})
    stub.add_response("index_faces", {"FaceRecords": [{"Face": {"FaceId": "f9", "ExternalImageId": "wolfgang"}}]},
                      {"CollectionId": "panel", "Image": {"Bytes": ANY}, "ExternalImageId": "wolfgang",
                       "MaxFaces": 1, "QualityFilter": "AUTO", "DetectionAttributes": ["DEFAULT"]})
    (done,) = enroll(_engine(client), "panel", "wolfgang", [photo])
    assert done["face_id"] == "f9"
    with pytest.raises(EnrolmentError, match="ExternalImageId"):
        enroll(_engine(client), "panel", "Wolfgang Langer", [photo])


def test_boto3_is_imported_only_for_the_rekognition_engine():
    code = ("import sys, moodlens.cli, moodlens.pipeline, moodlens.engines; "
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_eval_emotion_scores_rekognition_on_a_labelled_folder(stubbed, tmp_path):
    """``eval emotion --engine rekognition``: one DetectFaces per image (a tight crop is sent whole),
    accuracy over the classes Rekognition scores; a face without scores counts as unscored."""
    import cv2

    from moodlens.evaluation.emotion import evaluate_engine

    client, stub = stubbed
    rng = np.random.default_rng(0)
    for cls in ("happy", "sad", "contempt"):
        (tmp_path / cls).mkdir()
        cv2.imwrite(str(tmp_path / cls / "a.png"), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    # read_dataset sorts by class then file: contempt, happy, sad (contempt is still sent, then left out)
    stub.add_response("detect_faces", _detect(_face(emotions={"SAD": 70.0, "HAPPY": 30.0})))
    stub.add_response("detect_faces", _detect(_face(emotions=HAPPY)))
    stub.add_response("detect_faces", _detect(_face()))  # no emotions: unscored
    report = evaluate_engine(tmp_path, _engine(client))
    assert report["calls"] == 3 and report["unscored"] == 1
    assert report["left_out_classes"] == ["contempt"]
    assert report["accuracy"] == 1.0 and report["accuracy_all"] == 0.5  # happy right; sad had no scores
    assert report["model"].startswith("amazon-rekognition:DetectFaces@")


def test_service_job_with_the_rekognition_engine_fails_in_one_line_without_credentials(tmp_path):
    """A job can ask for the Rekognition engine (the server's AWS credentials); without any, the job
    fails with the one-line reason and the server goes on."""
    import os

    from service_util import running_server

    if not CLIP.exists():
        pytest.skip(f"sample clip {CLIP} not found")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_DEFAULT_REGION="eu-west-1")
    with running_server(tmp_path / "srv", env=env) as server, server.client() as c:
        with open(CLIP, "rb") as f:
            r = c.post("/api/videos", files={"file": (CLIP.name, f, "video/mp4")}, data={"engine": "rekognition"})
        assert r.status_code == 201, r.text
        job = server.wait_job(r.json()["job_id"])
        assert job["status"] == "failed" and "no AWS credentials" in job["error"]
        assert job["options"]["engine"] == "rekognition"
        with open(CLIP, "rb") as f:
            bad = c.post("/api/videos", files={"file": (CLIP.name, f, "video/mp4")}, data={"engine": "clarifai"})
        assert bad.status_code == 422 and "own or rekognition" in bad.text
