#!/usr/bin/python3
"""End-to-end tests of etfd from Python: a second, independent implementation of the wire
contract, with stubs generated from proto/efair.proto by grpc_tools at test start.

    test_etfd.py PATH-TO-ETFD SOURCE-DIR [unittest arguments]

etfd runs on 127.0.0.1, port 0, with the simulated device and a temporary repository holding
the TX2 profiles (and a fast copy of ResNet-18's, 100 times quicker, for the load tests),
in a temporary working directory. Checked: every RPC; status codes and messages of errors;
32 concurrent clients; clients that go away mid-Infer; a 70 MB message; malformed bytes;
the queue limit; SIGINT (exit 0, summary, results/runN/tasks.csv); the contract with the
ORIGINAL efair.proto (fields and methods, and an original client against etfd); and, when
the cpu device is built, a real ONNX model's output.
"""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

if len(sys.argv) < 3:
    sys.exit(__doc__)
ETFD = os.path.abspath(sys.argv[1])
SRC = os.path.abspath(sys.argv[2])
del sys.argv[1:3]

import grpc  # noqa: E402  (after the argument check, for a clear usage message)
from google.protobuf import descriptor_pb2  # noqa: E402

RPC_TIMEOUT = float(os.environ.get("ETF_TEST_RPC_TIMEOUT", "120"))
START_TIMEOUT = 60

# The ORIGINAL ETF efair.proto (umassos/energy-time-fairness), the contract kept.
ORIGINAL_PROTO = """syntax = "proto3";

package efair.rpc;

service EFairService {
  rpc LoadModel(LoadModelRequest) returns (LoadModelResponse) {}
  rpc CreateEntity(CreateEntityRequest) returns (CreateEntityResponse) {}
  rpc SetEntityPriority(SetEntityPriorityRequest) returns (SetEntityPriorityResponse) {}
  rpc Infer(InferRequest) returns (InferResponse) {}
}

message LoadModelRequest {
  string model_path = 1;
  string model_profile_path = 2;
  uint64 eid = 3;
  string frequency = 4;
}

message LoadModelResponse {
  bool success = 1;
  uint64 mid = 2;
}

message CreateEntityRequest {
  int64 priority = 1;
}

message CreateEntityResponse {
  bool success = 1;
  uint64 eid = 2;
}

message SetEntityPriorityRequest {
  uint64 eid = 1;
  int64 priority = 2;
}

message SetEntityPriorityResponse {
  bool success = 1;
}

message InferRequest {
  uint64 mid = 1;
}

message InferResponse {
  bool success = 1;
  uint64 tid = 2;
}
"""

R18_TOP_HZ = 1300500000
R18_LOW_HZ = 114750000

WORK = tempfile.mkdtemp(prefix="etfd_test.")
STUBS = os.path.join(WORK, "stubs")
ORIG = os.path.join(WORK, "orig")


def protoc(proto_dir, proto_file, out_dir, descriptor_set=None):
    os.makedirs(out_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", proto_dir,
           "--python_out=" + out_dir, "--grpc_python_out=" + out_dir]
    if descriptor_set:
        cmd.append("--descriptor_set_out=" + descriptor_set)
    cmd.append(os.path.join(proto_dir, proto_file))
    subprocess.run(cmd, check=True)


protoc(os.path.join(SRC, "proto"), "efair.proto", STUBS,
       descriptor_set=os.path.join(WORK, "efair.desc"))
os.makedirs(ORIG, exist_ok=True)
with open(os.path.join(ORIG, "efair.proto"), "w") as f:
    f.write(ORIGINAL_PROTO)
protoc(ORIG, "efair.proto", ORIG, descriptor_set=os.path.join(WORK, "orig.desc"))
sys.path.insert(0, STUBS)
import efair_pb2 as pb  # noqa: E402
import efair_pb2_grpc as pbg  # noqa: E402


def make_repo(path):
    """The TX2 profiles, a fast ResNet-18 (times / 100) and a link out of the repository."""
    os.makedirs(path)
    for name in ("resnet18_profile.json", "resnet50_profile.json"):
        shutil.copy(os.path.join(SRC, "data", "tx2", name), path)
    with open(os.path.join(SRC, "data", "tx2", "resnet18_profile.json")) as f:
        prof = json.load(f)

    def scale(d):
        return {k: v / 100.0 for k, v in d.items()}

    prof["model_name"] = "fast18"
    for key in ("exec_time", "energy"):
        if key in prof:
            prof[key] = scale(prof[key])
    for k in prof["kernel_profile"].values():
        for key in ("exec_time", "energy"):
            if key in k:
                k[key] = scale(k[key])
    with open(os.path.join(path, "fast.json"), "w") as f:
        json.dump(prof, f)
    os.makedirs(os.path.join(path, "r18"))
    shutil.copy(os.path.join(SRC, "data", "tx2", "resnet18_profile.json"),
                os.path.join(path, "r18", "profile.json"))
    outside = os.path.join(os.path.dirname(path), "outside.json")
    shutil.copy(os.path.join(path, "fast.json"), outside)
    os.symlink(outside, os.path.join(path, "escape.json"))


def etfd_env():
    """The environment etfd runs in: under ThreadSanitizer, with the suppressions for the
    uninstrumented gRPC libraries (tests/tsan_grpc.supp) unless some are given already."""
    env = dict(os.environ)
    tsan = env.get("TSAN_OPTIONS", "")
    if "suppressions=" not in tsan:
        supp = "suppressions=" + os.path.join(SRC, "tests", "tsan_grpc.supp")
        env["TSAN_OPTIONS"] = (tsan + ":" + supp) if tsan else supp
    return env


class Etfd:
    """One etfd process in its own working directory."""

    def __init__(self, name, device="sim", repo=None, extra=()):
        self.cwd = os.path.join(WORK, name)
        os.makedirs(self.cwd, exist_ok=True)
        self.repo = repo or os.path.join(self.cwd, "repo")
        if not repo:
            make_repo(self.repo)
        self.stderr_path = os.path.join(self.cwd, "stderr.%d.log" % time.monotonic_ns())
        self.stderr = open(self.stderr_path, "w")
        cmd = [ETFD, "--quantum-us", "40000", "--phi", "0.7", "--device", device,
               "--models", self.repo, "--listen", "127.0.0.1:0"] + list(extra)
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=etfd_env())
        self.first_line = self._read_line(START_TIMEOUT)
        m = re.search(r"listening on ([^ ]+):(\d+) \(", self.first_line or "")
        if not m:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("etfd did not start: %r; stderr:\n%s" % (self.first_line, self.log()))
        self.address = "%s:%s" % (m.group(1), m.group(2))
        self.channel = self.connect()
        self.stub = pbg.EFairServiceStub(self.channel)

    def _read_line(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return box[0] if box else None

    def connect(self, **options):
        opts = [("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20)]
        opts += list(options.items())
        ch = grpc.insecure_channel(self.address, options=opts)
        grpc.channel_ready_future(ch).result(timeout=START_TIMEOUT)
        return ch

    def log(self):
        with open(self.stderr_path) as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGINT, timeout=120):
        """Signals etfd and returns (exit status, the rest of its stdout). Calls in flight
        on self.channel go on until etfd has answered them."""
        self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError("etfd did not exit within %s s after %s; stderr:\n%s"
                                 % (timeout, sig, self.log()))
        finally:
            self.channel.close()
        return self.proc.returncode, out

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.channel.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.stderr.close()


def code_of(call, *args, **kwargs):
    """Runs an RPC expected to fail; returns (status code, details)."""
    try:
        call(*args, timeout=RPC_TIMEOUT, **kwargs)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    raise AssertionError("the call succeeded; an error was expected")


def read_floats(path):
    import array
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a


class ServerTest(unittest.TestCase):
    """Tests against one shared etfd (sim device)."""

    @classmethod
    def setUpClass(cls):
        cls.etfd = Etfd("shared", extra=["--max-queued", "64", "--drain-s", "30"])
        cls.stub = cls.etfd.stub

    @classmethod
    def tearDownClass(cls):
        try:
            status, out = cls.etfd.stop()
            assert status == 0, "etfd exited %s; stderr:\n%s" % (status, cls.etfd.log())
            assert "summary" in out, out
        finally:
            cls.etfd.kill()

    def setUp(self):
        self.assertTrue(self.etfd.alive(), "etfd died:\n" + self.etfd.log())

    def tearDown(self):
        self.assertTrue(self.etfd.alive(), "etfd died:\n" + self.etfd.log())

    # ---- helpers

    def entity(self, priority=0, stub=None):
        r = (stub or self.stub).CreateEntity(pb.CreateEntityRequest(priority=priority),
                                             timeout=RPC_TIMEOUT)
        self.assertTrue(r.success)
        self.assertGreater(r.eid, 0)
        return r.eid

    def load(self, eid, path="fast.json", frequency="", stub=None, profile=""):
        r = (stub or self.stub).LoadModel(
            pb.LoadModelRequest(model_path=path, model_profile_path=profile, eid=eid,
                                frequency=frequency), timeout=RPC_TIMEOUT)
        self.assertTrue(r.success)
        return r

    def infer(self, mid, stub=None):
        r = (stub or self.stub).Infer(pb.InferRequest(mid=mid), timeout=RPC_TIMEOUT)
        self.assertTrue(r.success)
        return r

    def stats(self, eid=0):
        return self.stub.GetStats(pb.GetStatsRequest(eid=eid), timeout=RPC_TIMEOUT)

    def assert_serving(self):
        eid = self.entity()
        mid = self.load(eid).mid
        self.infer(mid)
        self.stub.UnloadModel(pb.UnloadModelRequest(mid=mid), timeout=RPC_TIMEOUT)
        self.stub.DeleteEntity(pb.DeleteEntityRequest(eid=eid), timeout=RPC_TIMEOUT)

    # ---- tests

    def test_every_rpc(self):
        eid = self.entity(priority=-3)
        r = self.stub.SetEntityPriority(pb.SetEntityPriorityRequest(eid=eid, priority=5),
                                        timeout=RPC_TIMEOUT)
        self.assertTrue(r.success)
        lm = self.load(eid, "resnet18_profile.json", frequency=str(R18_TOP_HZ))
        self.assertEqual(lm.frequency_hz, R18_TOP_HZ)
        self.assertEqual(len(lm.inputs), 0)  # the sim device takes no tensors
        self.assertEqual(self.load(eid, "r18", frequency="#0").frequency_hz, R18_LOW_HZ)
        self.assertEqual(self.load(eid, "fast.json", frequency="2").frequency_hz, 318750000)
        self.assertEqual(self.load(eid, "resnet50_profile.json").frequency_hz, R18_TOP_HZ)
        self.assertEqual(self.load(eid, "r18", profile="fast.json").frequency_hz, R18_TOP_HZ)

        r = self.infer(lm.mid)
        self.assertGreater(r.tid, 0)
        # ResNet-18 at 1300.5 MHz: 21.4 ms of kernels on the sleeping sim device.
        self.assertGreaterEqual(r.service_time_us, 21000)
        self.assertGreater(r.energy_uj, 0)
        self.assertGreaterEqual(r.latency_us, r.service_time_us)
        self.assertGreaterEqual(r.latency_us, r.queue_time_us)
        self.assertEqual(len(r.outputs), 0)

        s = self.stats(eid)
        self.assertTrue(s.success)
        self.assertEqual(len(s.entities), 1)
        e = s.entities[0]
        self.assertEqual((e.eid, e.priority, e.weight), (eid, 5, 335))
        self.assertEqual(e.tasks_done, 1)
        self.assertEqual(len(e.models), 5)
        m = [m for m in e.models if m.mid == lm.mid][0]
        self.assertEqual((m.eid, m.name, m.frequency_hz, m.tasks_done), (eid, "resnet18", R18_TOP_HZ, 1))
        self.assertEqual(m.time_us, r.service_time_us)
        self.assertAlmostEqual(m.energy_uj, r.energy_uj, places=3)
        self.assertEqual(e.time_us, m.time_us)
        # By frequency: a row per clock of its models, ascending; only the top one ran.
        self.assertEqual([f.frequency_hz for f in e.frequencies],
                         [R18_LOW_HZ, 318750000, R18_TOP_HZ])
        self.assertEqual([(f.models, f.kernels, f.time_us) for f in e.frequencies[:2]],
                         [(1, 0, 0), (1, 0, 0)])
        top = e.frequencies[2]
        self.assertEqual(top.models, 3)
        self.assertGreater(top.kernels, 0)
        self.assertEqual(top.time_us, r.service_time_us)
        self.assertAlmostEqual(top.energy_uj, r.energy_uj, places=3)
        s = self.stats()
        self.assertEqual((s.device, s.meter, s.freq, s.quantum_us), ("sim", "model", "sim", 40000))
        self.assertAlmostEqual(s.phi, 0.7)
        self.assertIn(eid, [x.eid for x in s.entities])
        self.assertGreaterEqual(s.busy_us, r.service_time_us)
        self.assertGreaterEqual(s.dispatches, 24)
        hz = [f.frequency_hz for f in s.frequencies]
        self.assertEqual(hz, sorted(set(hz)))
        self.assertIn(R18_TOP_HZ, hz)
        self.assertEqual(sum(f.kernels for f in s.frequencies), s.dispatches)
        busy = sum(f.time_us for f in s.frequencies)
        self.assertTrue(busy <= s.busy_us <= busy + len(hz), (busy, s.busy_us))
        self.assertAlmostEqual(sum(f.energy_uj for f in s.frequencies), s.energy_uj, places=2)

        for m in e.models:
            self.assertTrue(self.stub.UnloadModel(pb.UnloadModelRequest(mid=m.mid),
                                                  timeout=RPC_TIMEOUT).success)
        self.assertTrue(self.stub.DeleteEntity(pb.DeleteEntityRequest(eid=eid),
                                               timeout=RPC_TIMEOUT).success)

    def test_errors(self):
        s, C = self.stub, grpc.StatusCode
        eid = self.entity()

        code, msg = code_of(s.CreateEntity, pb.CreateEntityRequest(priority=20))
        self.assertEqual(code, C.INVALID_ARGUMENT)
        self.assertIn("-20..19", msg)
        self.assertIn("20", msg)
        self.assertEqual(code_of(s.CreateEntity, pb.CreateEntityRequest(priority=-21))[0],
                         C.INVALID_ARGUMENT)
        self.assertEqual(code_of(s.SetEntityPriority,
                                 pb.SetEntityPriorityRequest(eid=eid, priority=100))[0],
                         C.INVALID_ARGUMENT)
        code, msg = code_of(s.SetEntityPriority, pb.SetEntityPriorityRequest(eid=987654, priority=0))
        self.assertEqual(code, C.NOT_FOUND)
        self.assertIn("987654", msg)

        def load_err(**kw):
            kw.setdefault("eid", eid)
            return code_of(s.LoadModel, pb.LoadModelRequest(**kw))

        code, msg = load_err(model_path=os.path.join(self.etfd.repo, "fast.json"))
        self.assertEqual(code, C.INVALID_ARGUMENT)
        self.assertIn("absolute", msg)
        code, msg = load_err(model_path="../repo/fast.json")
        self.assertEqual(code, C.INVALID_ARGUMENT)
        self.assertIn("..", msg)
        code, msg = load_err(model_path="escape.json")
        self.assertEqual(code, C.INVALID_ARGUMENT)
        self.assertIn("outside", msg)
        code, msg = load_err(model_path="nothing_here.json")
        self.assertEqual(code, C.NOT_FOUND)
        self.assertIn("nothing_here.json", msg)
        code, msg = load_err(model_path="fast.json", eid=424242)
        self.assertEqual(code, C.NOT_FOUND)
        self.assertIn("424242", msg)
        code, msg = load_err(model_path="resnet18_profile.json", frequency="1000000000")
        self.assertEqual(code, C.INVALID_ARGUMENT)
        self.assertIn("1300500000", msg)  # says which are available
        self.assertEqual(load_err(model_path="fast.json", frequency="#99")[0], C.INVALID_ARGUMENT)
        self.assertEqual(load_err(model_path="fast.json", frequency="fast")[0], C.INVALID_ARGUMENT)
        self.assertEqual(load_err(model_path="")[0], C.INVALID_ARGUMENT)

        code, msg = code_of(s.Infer, pb.InferRequest(mid=31337))
        self.assertEqual(code, C.NOT_FOUND)
        self.assertIn("31337", msg)
        mid = self.load(eid).mid
        code, msg = code_of(s.Infer, pb.InferRequest(
            mid=mid, inputs=[pb.Tensor(dims=[1, 3], data=b"\0" * 12)]))
        self.assertEqual(code, C.INVALID_ARGUMENT)
        self.assertIn("sim", msg)

        code, msg = code_of(s.DeleteEntity, pb.DeleteEntityRequest(eid=eid))
        self.assertEqual(code, C.FAILED_PRECONDITION)
        self.assertIn("models", msg)
        self.assertEqual(code_of(s.UnloadModel, pb.UnloadModelRequest(mid=55555))[0], C.NOT_FOUND)
        self.assertEqual(code_of(s.DeleteEntity, pb.DeleteEntityRequest(eid=55555))[0], C.NOT_FOUND)
        self.assertEqual(code_of(s.GetStats, pb.GetStatsRequest(eid=55555))[0], C.NOT_FOUND)

        nope = self.etfd.channel.unary_unary("/efair.rpc.EFairService/Nope",
                                             request_serializer=lambda b: b,
                                             response_deserializer=lambda b: b)
        code, msg = code_of(nope, b"")
        self.assertEqual(code, C.UNIMPLEMENTED)
        self.assertIn("Nope", msg)

        # An original client reads `success`: the error carries no response body, and an
        # empty body decodes to success = false.
        self.assertFalse(pb.LoadModelResponse.FromString(b"").success)

        s.UnloadModel(pb.UnloadModelRequest(mid=mid), timeout=RPC_TIMEOUT)
        s.DeleteEntity(pb.DeleteEntityRequest(eid=eid), timeout=RPC_TIMEOUT)

    def test_concurrent_clients(self):
        clients, per_client = 32, 20

        def client(i):
            ch = self.etfd.connect()
            try:
                stub = pbg.EFairServiceStub(ch)
                eid = self.entity(priority=(i % 40) - 20, stub=stub)
                mid = self.load(eid, stub=stub).mid
                tids = [self.infer(mid, stub=stub).tid for _ in range(per_client)]
                return eid, mid, tids
            finally:
                ch.close()

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(client, range(clients)))
        tids = [t for _, _, ts in results for t in ts]
        self.assertEqual(len(tids), clients * per_client)
        self.assertEqual(len(set(tids)), len(tids))
        for eid, mid, _ in results:
            e = self.stats(eid).entities[0]
            self.assertEqual(e.tasks_done, per_client)
            self.assertEqual(e.models[0].tasks_done, per_client)
            self.stub.UnloadModel(pb.UnloadModelRequest(mid=mid), timeout=RPC_TIMEOUT)
            self.stub.DeleteEntity(pb.DeleteEntityRequest(eid=eid), timeout=RPC_TIMEOUT)

    def test_client_gone_mid_infer(self):
        eid = self.entity()
        mid = self.load(eid, "resnet18_profile.json").mid
        # Cancelled futures: the client stops waiting, the tasks still run.
        futures = [self.stub.Infer.future(pb.InferRequest(mid=mid), timeout=RPC_TIMEOUT)
                   for _ in range(3)]
        time.sleep(0.01)
        for f in futures:
            f.cancel()
        # A client process killed while its Infer waits.
        code = ("import sys, grpc; sys.path.insert(0, %r); import efair_pb2 as pb, "
                "efair_pb2_grpc as pbg; s = pbg.EFairServiceStub(grpc.insecure_channel(%r)); "
                "print('go', flush=True); s.Infer(pb.InferRequest(mid=%d))" % (STUBS, self.etfd.address, mid))
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        self.assertEqual(child.stdout.readline().strip(), "go")
        time.sleep(0.2)
        child.kill()
        child.wait()
        child.stdout.close()
        # A closed channel with a call in flight.
        ch = self.etfd.connect()
        pbg.EFairServiceStub(ch).Infer.future(pb.InferRequest(mid=mid))
        time.sleep(0.05)
        ch.close()

        # Others are served meanwhile, and this client too.
        self.assert_serving()
        self.infer(mid)
        # Whatever reached the server ran to its end and was dropped cleanly: the queue
        # empties and the model can be unloaded (nothing is left in flight). How many of
        # the abandoned calls reached it before their client left depends on timing.
        deadline = time.time() + 60
        while True:
            e = self.stats(eid).entities[0]
            try:
                self.stub.UnloadModel(pb.UnloadModelRequest(mid=mid), timeout=RPC_TIMEOUT)
                break
            except grpc.RpcError as err:
                self.assertEqual(err.code(), grpc.StatusCode.FAILED_PRECONDITION, err.details())
                self.assertLess(time.time(), deadline, "tasks stay in flight: %s" % e)
                time.sleep(0.05)
        e = self.stats(eid).entities[0]
        self.assertEqual(e.tasks_queued, 0)
        self.assertGreaterEqual(e.tasks_done, 1)
        self.stub.DeleteEntity(pb.DeleteEntityRequest(eid=eid), timeout=RPC_TIMEOUT)

    def test_oversized_message(self):
        big = pb.InferRequest(mid=1, inputs=[pb.Tensor(dims=[70000000 // 4], data=b"\0" * 70000000)])
        code, msg = code_of(self.stub.Infer, big)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, msg)
        self.assert_serving()

    def test_malformed_bytes(self):
        garbage = [b"\xff\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 11,
                   b"\x12\x05ab"]
        for method in ("LoadModel", "CreateEntity", "SetEntityPriority", "Infer", "UnloadModel",
                       "DeleteEntity", "GetStats"):
            raw = self.etfd.channel.unary_unary("/efair.rpc.EFairService/" + method,
                                                request_serializer=lambda b: b,
                                                response_deserializer=lambda b: b)
            for g in garbage:
                code, msg = code_of(raw, g)
                self.assertIn(code, (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL),
                              "%s %r: %s %s" % (method, g, code, msg))
        self.assert_serving()

    def test_queue_limit(self):
        # The server allows 64 queued tasks: 100 at once on one ResNet-18 (21 ms each) hit it.
        eid = self.entity()
        mid = self.load(eid, "resnet18_profile.json").mid
        futures = [self.stub.Infer.future(pb.InferRequest(mid=mid), timeout=RPC_TIMEOUT)
                   for _ in range(100)]
        ok, exhausted = 0, 0
        for f in futures:
            try:
                f.result()
                ok += 1
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
                self.assertIn("queued", e.details())
                exhausted += 1
        self.assertGreater(exhausted, 0)
        self.assertGreater(ok, 0)
        self.assertEqual(self.stats(eid).entities[0].tasks_done, ok)
        self.stub.UnloadModel(pb.UnloadModelRequest(mid=mid), timeout=RPC_TIMEOUT)
        self.stub.DeleteEntity(pb.DeleteEntityRequest(eid=eid), timeout=RPC_TIMEOUT)

    def test_original_client(self):
        """A client built from the ORIGINAL efair.proto calls the four original methods."""
        script = """
import sys
sys.path.insert(0, %r)
import grpc, efair_pb2 as pb, efair_pb2_grpc as pbg
s = pbg.EFairServiceStub(grpc.insecure_channel(%r))
e = s.CreateEntity(pb.CreateEntityRequest(priority=0), timeout=60)
assert e.success and e.eid > 0, e
p = s.SetEntityPriority(pb.SetEntityPriorityRequest(eid=e.eid, priority=-5), timeout=60)
assert p.success
m = s.LoadModel(pb.LoadModelRequest(model_path="fast.json", eid=e.eid, frequency="1300500000"),
                timeout=60)
assert m.success and m.mid > 0, m
r = s.Infer(pb.InferRequest(mid=m.mid), timeout=60)
assert r.success and r.tid > 0, r
try:
    s.Infer(pb.InferRequest(mid=999999), timeout=60)
    raise SystemExit("an unknown model was accepted")
except grpc.RpcError as err:
    assert err.code() == grpc.StatusCode.NOT_FOUND, err
print("original-client-ok", e.eid, m.mid, r.tid)
""" % (ORIG, self.etfd.address)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=RPC_TIMEOUT)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("original-client-ok", out.stdout)
        eid, mid = int(out.stdout.split()[1]), int(out.stdout.split()[2])
        e = self.stats(eid).entities[0]
        self.assertEqual((e.priority, e.tasks_done), (-5, 1))
        self.stub.UnloadModel(pb.UnloadModelRequest(mid=mid), timeout=RPC_TIMEOUT)
        self.stub.DeleteEntity(pb.DeleteEntityRequest(eid=eid), timeout=RPC_TIMEOUT)


class ContractTest(unittest.TestCase):
    """Every field and method of the ORIGINAL efair.proto is in proto/efair.proto, with the
    same number, type and label."""

    @staticmethod
    def file_of(path):
        fds = descriptor_pb2.FileDescriptorSet()
        with open(path, "rb") as f:
            fds.ParseFromString(f.read())
        return fds.file[0]

    def test_original_fields_kept(self):
        orig = self.file_of(os.path.join(WORK, "orig.desc"))
        cur = self.file_of(os.path.join(WORK, "efair.desc"))
        self.assertEqual(orig.package, cur.package)
        self.assertEqual(orig.syntax, cur.syntax)
        messages = {m.name: m for m in cur.message_type}
        for om in orig.message_type:
            self.assertIn(om.name, messages)
            fields = {f.name: f for f in messages[om.name].field}
            numbers = {f.number: f for f in messages[om.name].field}
            for of in om.field:
                self.assertIn(of.name, fields, "%s.%s" % (om.name, of.name))
                f = fields[of.name]
                self.assertEqual((f.number, f.type, f.label, f.type_name),
                                 (of.number, of.type, of.label, of.type_name),
                                 "%s.%s" % (om.name, of.name))
                self.assertIs(numbers[of.number], f)
        services = {s.name: s for s in cur.service}
        for os_ in orig.service:
            self.assertIn(os_.name, services)
            methods = {m.name: m for m in services[os_.name].method}
            for om in os_.method:
                self.assertIn(om.name, methods)
                m = methods[om.name]
                self.assertEqual((m.input_type, m.output_type, m.client_streaming,
                                  m.server_streaming),
                                 (om.input_type, om.output_type, om.client_streaming,
                                  om.server_streaming))


class ShutdownTest(unittest.TestCase):
    def test_sigint_summary_and_tasks_csv(self):
        d = Etfd("shutdown")
        try:
            s = d.stub
            eid = s.CreateEntity(pb.CreateEntityRequest(priority=0), timeout=RPC_TIMEOUT).eid
            m1 = s.LoadModel(pb.LoadModelRequest(model_path="fast.json", eid=eid),
                             timeout=RPC_TIMEOUT).mid
            m2 = s.LoadModel(pb.LoadModelRequest(model_path="resnet18_profile.json", eid=eid,
                                                 frequency="#12"), timeout=RPC_TIMEOUT).mid
            tids = [s.Infer(pb.InferRequest(mid=m1), timeout=RPC_TIMEOUT).tid for _ in range(7)]
            tids += [s.Infer(pb.InferRequest(mid=m2), timeout=RPC_TIMEOUT).tid for _ in range(3)]
            # In flight at the signal: drained, answered, counted.
            late = s.Infer.future(pb.InferRequest(mid=m2), timeout=RPC_TIMEOUT)
            time.sleep(0.005)
            status, out = d.stop(signal.SIGINT)
            self.assertTrue(late.result().success)
            tids.append(late.result().tid)
        finally:
            d.kill()
        self.assertEqual(status, 0, d.log())
        self.assertIn("summary", out)
        # Then by frequency: both models ran at the top clock.
        self.assertIn("etfd: summary by frequency", out)
        freq_rows = [l.split() for l in out.split("etfd: summary by frequency", 1)[1].splitlines()]
        freq_rows = [p for p in freq_rows if len(p) == 6 and p[0].isdigit()]
        self.assertEqual([int(p[0]) for p in freq_rows], [R18_TOP_HZ])
        self.assertGreater(int(freq_rows[0][1]), 0)
        rows = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 7 and parts[0].isdigit():
                rows[int(parts[0])] = parts
        self.assertEqual(rows[m1][2], "fast18")
        self.assertEqual(int(rows[m1][4]), 7)
        self.assertEqual(rows[m2][2], "resnet18")
        self.assertEqual(int(rows[m2][3]), R18_TOP_HZ)
        self.assertEqual(int(rows[m2][4]), 4)
        self.assertGreater(float(rows[m2][5]), 4 * 21000)
        self.assertGreater(float(rows[m2][6]), 0)

        csv = os.path.join(d.cwd, "results", "run0", "tasks.csv")
        with open(csv) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0],
                         "task_id,entity_id,model_id,start_t,end_t,service_time,energy_used")
        self.assertEqual(len(lines) - 1, len(tids))
        seen = set()
        for line in lines[1:]:
            tid, e, m, start, end, service, energy = line.split(",")
            seen.add(int(tid))
            self.assertEqual(int(e), eid)
            self.assertIn(int(m), (m1, m2))
            self.assertLessEqual(float(start), float(end))
            self.assertLessEqual(float(service), float(end) - float(start) + 1)
            self.assertGreater(float(energy), 0)
        self.assertEqual(seen, set(tids))

        # A second run in the same folder takes the next free runN; SIGTERM works too.
        d2 = Etfd("shutdown", repo=d.repo)
        try:
            status, _ = d2.stop(signal.SIGTERM)
        finally:
            d2.kill()
        self.assertEqual(status, 0, d2.log())
        with open(os.path.join(d.cwd, "results", "run1", "tasks.csv")) as f:
            self.assertEqual(len(f.read().splitlines()), 1)

    def test_bad_command_lines(self):
        for args in (["--phi", "0.7", "--device", "sim", "--models", "."],
                     ["--quantum-us", "0", "--phi", "0.7", "--device", "sim", "--models", "."],
                     ["--quantum-us", "40000", "--phi", "1.5", "--device", "sim", "--models", "."],
                     ["--quantum-us", "40000", "--phi", "0.7", "--device", "tpu", "--models", "."],
                     ["--quantum-us", "40000", "--phi", "0.7", "--device", "sim",
                      "--models", "/nonexistent/etf-models"],
                     ["40000", "0.7", "fpga"],
                     ["40000", "0.7"]):
            r = subprocess.run([ETFD] + args, capture_output=True, text=True, timeout=60,
                               cwd=WORK)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn("etfd:", r.stderr)
        # gpu in the original form is the cuda device: a clear error without one.
        r = subprocess.run([ETFD, "40000", "0.7", "gpu"], capture_output=True, text=True,
                           timeout=60, cwd=WORK)
        if r.returncode != 0:
            self.assertIn("cuda", r.stderr)


def cpu_device_built():
    r = subprocess.run([ETFD, "--quantum-us", "40000", "--phi", "0.7", "--device", "cpu",
                        "--models", "/nonexistent/etf-models"], capture_output=True, text=True,
                       timeout=60)
    return "not available" not in r.stderr


def onnx_model(repo):
    """A model with input.bin and output.bin in repo: tiny_cnn exported with torch, else the
    repository's exported squeezenet1_1 if present. Returns its folder name or None."""
    try:
        import torch  # noqa: F401
        subprocess.run(["/usr/bin/python3", os.path.join(SRC, "scripts", "export_models.py"),
                        repo, "--only", "tiny_cnn"], check=True, capture_output=True)
        return "tiny_cnn"
    except ImportError:
        pass
    src = os.path.join(SRC, "models", "squeezenet1_1")
    if os.path.exists(os.path.join(src, "model.onnx")):
        shutil.copytree(src, os.path.join(repo, "squeezenet1_1"))
        return "squeezenet1_1"
    return None


@unittest.skipUnless(cpu_device_built(), "the cpu device is not built")
class CpuDeviceTest(unittest.TestCase):
    def test_onnx_infer_with_tensors(self):
        repo = os.path.join(WORK, "cpu_repo")
        os.makedirs(repo, exist_ok=True)
        name = onnx_model(repo)
        if not name:
            self.skipTest("no ONNX model: torch is not importable and models/ has none")
        d = Etfd("cpu", device="cpu", repo=repo, extra=["--threads", "2"])
        try:
            s = d.stub
            eid = s.CreateEntity(pb.CreateEntityRequest(priority=0), timeout=RPC_TIMEOUT).eid
            # No profile: measured at load and cached beside the model.
            lm = s.LoadModel(pb.LoadModelRequest(model_path=name, eid=eid), timeout=RPC_TIMEOUT)
            self.assertTrue(os.path.exists(os.path.join(repo, name, "profile.json")))
            self.assertEqual(len(lm.inputs), 1)
            self.assertEqual(len(lm.outputs), 1)
            inp = read_floats(os.path.join(repo, name, "input.bin"))
            want = read_floats(os.path.join(repo, name, "output.bin"))
            t = pb.Tensor(name=lm.inputs[0].name, dims=list(lm.inputs[0].dims),
                          data=inp.tobytes())
            r = s.Infer(pb.InferRequest(mid=lm.mid, inputs=[t], return_outputs=True),
                        timeout=RPC_TIMEOUT)
            self.assertEqual(len(r.outputs), 1)
            self.assertEqual(list(r.outputs[0].dims), list(lm.outputs[0].dims))
            got = read_floats_bytes(r.outputs[0].data)
            self.assertEqual(len(got), len(want))
            scale = max(abs(x) for x in want) or 1.0
            worst = max(abs(a - b) for a, b in zip(got, want)) / scale
            self.assertLess(worst, 1e-4)
            # A wrong shape says both shapes.
            bad = pb.Tensor(dims=[1, 2, 3], data=b"\0" * 24)
            code, msg = code_of(s.Infer, pb.InferRequest(mid=lm.mid, inputs=[bad]))
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("[1,2,3]", msg)
            self.assertIn("[" + ",".join(str(x) for x in lm.inputs[0].dims) + "]", msg)
            # Second tenant of the same model: the plan and the cached profile are reused.
            eid2 = s.CreateEntity(pb.CreateEntityRequest(priority=0), timeout=RPC_TIMEOUT).eid
            lm2 = s.LoadModel(pb.LoadModelRequest(model_path=name, eid=eid2, frequency="#0"),
                              timeout=RPC_TIMEOUT)
            r2 = s.Infer(pb.InferRequest(mid=lm2.mid, inputs=[t], return_outputs=True),
                         timeout=RPC_TIMEOUT)
            self.assertEqual(r2.outputs[0].data, r.outputs[0].data)
            # No inputs: the model's last ones.
            self.assertTrue(s.Infer(pb.InferRequest(mid=lm.mid), timeout=RPC_TIMEOUT).success)
            status, _ = d.stop()
            self.assertEqual(status, 0, d.log())
        finally:
            d.kill()


def read_floats_bytes(b):
    import array
    a = array.array("f")
    a.frombytes(b)
    if sys.byteorder != "little":
        a.byteswap()
    return a


if __name__ == "__main__":
    try:
        unittest.main(verbosity=2)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
