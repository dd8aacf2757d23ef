"""List a PKCS#11 token's objects as JSON (run as a child, with SOFTHSM2_CONF set).

Usage: kms_server_p11_probe.py MODULE TOKEN_LABEL  (the user PIN on stdin)

For each private key: its label, CKA_SENSITIVE, CKA_EXTRACTABLE,
CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, and whether reading CKA_VALUE
(the key itself) works, which it must not. For each public key: its SPKI.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_ec_public_key


def _flag(obj: Any, attr: Attribute) -> bool | None:
    try:
        return bool(obj[attr])
    except p11e.PKCS11Error:
        return None


def main() -> None:
    module, label = sys.argv[1], sys.argv[2]
    pin = sys.stdin.read().strip()
    token = pkcs11.lib(module).get_token(token_label=label)
    out: list[dict[str, Any]] = []
    with token.open(user_pin=pin) as session:
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
            item: dict[str, Any] = {"class": "PRIVATE_KEY", "label": obj[Attribute.LABEL]}
            for name, attr in (
                ("sensitive", Attribute.SENSITIVE),
                ("extractable", Attribute.EXTRACTABLE),
                ("always_sensitive", Attribute.ALWAYS_SENSITIVE),
                ("never_extractable", Attribute.NEVER_EXTRACTABLE),
                ("token", Attribute.TOKEN),
            ):
                item[name] = _flag(obj, attr)
            try:
                obj[Attribute.VALUE]
                item["value_readable"] = True
            except p11e.PKCS11Error:
                item["value_readable"] = False
            out.append(item)
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY}):
            item = {"class": "PUBLIC_KEY", "label": obj[Attribute.LABEL], "spki": None}
            if isinstance(obj, pkcs11.PublicKey) and obj.key_type == KeyType.EC:
                item["spki"] = encode_ec_public_key(obj).hex()
            out.append(item)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
