#!/usr/bin/env python3
"""Calls the driver's CSI socket with Python grpcio, a grpc-core client.

grpc-core clients send the socket path, not `localhost`, as the HTTP/2
:authority of a `unix:` target. core/tests/grpc_clients.rs runs this script
against the driver with fake providers and checks what it prints.

Stubs are generated from the CSI proto into --stubs at run time. For each
--authority ("" keeps grpcio's own choice) one channel to unix:<socket>
calls GetPluginInfo, Probe, NodeGetInfo and CreateVolume. The results are
printed as one JSON object; a failed call is reported in its run's "error"
field rather than raised, so the caller sees every run.
"""

import argparse
import importlib
import json
import os
import sys


def generate_stubs(proto, out_dir):
    import grpc_tools
    from grpc_tools import protoc

    # grpcio-tools ships Google's well-known types (wrappers, timestamp).
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    proto = os.path.abspath(proto)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            "-I" + os.path.dirname(proto),
            "-I" + well_known,
            "--python_out=" + out_dir,
            "--grpc_python_out=" + out_dir,
            proto,
        ]
    )
    if status != 0:
        sys.exit("protoc could not compile %s (exit %d)" % (proto, status))
    sys.path.insert(0, out_dir)
    name = os.path.splitext(os.path.basename(proto))[0]
    return importlib.import_module(name + "_pb2"), importlib.import_module(name + "_pb2_grpc")


def calls(grpc, pb, rpc, target, authority, volume_name, volume_type):
    options = [("grpc.default_authority", authority)] if authority else []
    result = {"authority": authority or None, "volume_name": volume_name}
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        identity = rpc.IdentityStub(channel)
        node = rpc.NodeStub(channel)
        controller = rpc.ControllerStub(channel)

        info = identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=20)
        result["plugin_name"] = info.name
        result["vendor_version"] = info.vendor_version

        probe = identity.Probe(pb.ProbeRequest(), timeout=20)
        result["ready"] = probe.ready.value if probe.HasField("ready") else None

        node_info = node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=20)
        result["node_id"] = node_info.node_id

        capability = pb.VolumeCapability(
            mount=pb.VolumeCapability.MountVolume(),
            access_mode=pb.VolumeCapability.AccessMode(
                mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
            ),
        )
        created = controller.CreateVolume(
            pb.CreateVolumeRequest(
                name=volume_name,
                capacity_range=pb.CapacityRange(required_bytes=1 << 30),
                volume_capabilities=[capability],
                parameters={"type": volume_type},
            ),
            timeout=20,
        )
        result["volume_id"] = created.volume.volume_id
        result["capacity_bytes"] = created.volume.capacity_bytes
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", required=True, help="path of csi.proto")
    parser.add_argument("--stubs", required=True, help="directory for the generated modules")
    parser.add_argument("--socket", required=True, help="the CSI unix socket")
    parser.add_argument(
        "--authority",
        action="append",
        default=[],
        help="an :authority to send (repeatable; empty: grpcio's default)",
    )
    parser.add_argument("--volume-type", default="alpha", help="the CreateVolume 'type' parameter")
    args = parser.parse_args()

    import grpc

    pb, rpc = generate_stubs(args.proto, args.stubs)
    target = "unix:" + os.path.abspath(args.socket)
    runs = []
    for number, authority in enumerate(args.authority or [""]):
        name = "pvc-python-%d" % number
        try:
            runs.append(calls(grpc, pb, rpc, target, authority, name, args.volume_type))
        except grpc.RpcError as err:
            runs.append(
                {
                    "authority": authority or None,
                    "volume_name": name,
                    "error": "%s: %s" % (err.code(), err.details()),
                }
            )
        except grpc.FutureTimeoutError:
            runs.append(
                {
                    "authority": authority or None,
                    "volume_name": name,
                    "error": "channel to %s not ready in 20 s" % target,
                }
            )
    print(json.dumps({"grpc_version": grpc.__version__, "runs": runs}))


if __name__ == "__main__":
    main()
