#!/usr/bin/env python3
"""Reference signatures from Alibaba Cloud's official Python SDKs.

Computes, with fixed nonces and timestamps, the RPC (HMAC-SHA1) signature
with both `aliyun-python-sdk-core` and `alibabacloud_tea_openapi`, and the
V3 (ACS3-HMAC-SHA256) Authorization header with `alibabacloud_tea_openapi`,
for several ECS requests. Prints one JSON document; the Rust test
`sdk_cross_check.rs` signs the same inputs with this crate and compares.

Needs: pip install aliyun-python-sdk-core alibabacloud_tea_openapi
"""

import json
import sys

from aliyunsdkcore.auth.composer import rpc_signature_composer
from aliyunsdkcore.utils import parameter_helper
from alibabacloud_tea_openapi.utils import Utils as TeaUtils

ACCESS_KEY_ID = "LTAI5tCrossCheckKey"
SECRET = "cross-check-secret/+="
TIMESTAMP = "2024-05-06T07:08:09Z"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

CASES = [
    (
        "CreateDisk with tags and encryption",
        "CreateDisk",
        {
            "RegionId": "cn-hangzhou",
            "ZoneId": "cn-hangzhou-a",
            "DiskCategory": "cloud_essd",
            "PerformanceLevel": "PL1",
            "Size": "40",
            "Encrypted": "true",
            "KMSKeyId": "0e478b7a-4262-4802-b8cb-00d3fb40826b",
            "DiskName": "pvc-0b6e1d5c",
            "ClientToken": "pvc-0b6e1d5c-cloud_essd",
            "Tag.1.Key": "omnidisk.csi.dev/volume-name",
            "Tag.1.Value": "pvc-0b6e1d5c",
            "Tag.2.Key": "team",
            "Tag.2.Value": "storage & more*",
        },
    ),
    (
        "DescribeDisks with a JSON array of IDs",
        "DescribeDisks",
        {
            "RegionId": "cn-hangzhou",
            "DiskIds": json.dumps(["d-bp1aaaaaaaaaaaaaaaaa", "d-bp1bbbbbbbbbbbbbbbbb"], separators=(",", ":")),
            "MaxResults": "100",
        },
    ),
    (
        "Non-ASCII values",
        "CreateSnapshot",
        {
            "DiskId": "d-bp1aaaaaaaaaaaaaaaaa",
            "SnapshotName": "备份-スナップ ~ü",
            "Description": "数据盘 快照",
            "ClientToken": "snap-1-snap",
            "Tag.1.Key": "名前",
            "Tag.1.Value": "値 value",
        },
    ),
]


def classic_rpc(action, params, nonce):
    parameter_helper.get_iso_8061_date = lambda: TIMESTAMP
    parameter_helper.get_uuid = lambda: nonce
    query = dict(params)
    query["Action"] = action
    query["Version"] = "2014-05-26"
    url, string_to_sign = rpc_signature_composer.get_signed_url(
        query, ACCESS_KEY_ID, SECRET, "JSON", "POST", {}
    )
    signature = None
    signed = {}
    # get_signed_url refreshes `query` in place with the common parameters.
    for key, value in query.items():
        if key == "Signature":
            signature = value
        else:
            signed[key] = value
    return signed, string_to_sign, signature


def main():
    out = []
    for i, (name, action, params) in enumerate(CASES):
        nonce = "nonce-%04d-fixed" % i
        signed, string_to_sign, classic_sig = classic_rpc(action, params, nonce)
        tea_sig = TeaUtils.get_rpcsignature(signed, "POST", SECRET)

        class Req:
            pass

        req = Req()
        req.method = "POST"
        req.pathname = "/"
        req.query = dict(params)
        req.headers = {
            "host": "ecs.cn-hangzhou.aliyuncs.com",
            "x-acs-action": action,
            "x-acs-version": "2014-05-26",
            "x-acs-date": TIMESTAMP,
            "x-acs-signature-nonce": nonce,
            "x-acs-content-sha256": EMPTY_SHA256,
        }
        auth = TeaUtils.get_authorization(req, "ACS3-HMAC-SHA256", EMPTY_SHA256, ACCESS_KEY_ID, SECRET)
        out.append(
            {
                "name": name,
                "rpc_params": signed,
                "rpc_string_to_sign": string_to_sign,
                "rpc_signature_classic": classic_sig,
                "rpc_signature_tea": tea_sig,
                "v3_query": req.query,
                "v3_headers": req.headers,
                "v3_authorization": auth,
            }
        )
    json.dump({"access_key_id": ACCESS_KEY_ID, "secret": SECRET, "cases": out}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
