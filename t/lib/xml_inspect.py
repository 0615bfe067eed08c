#!/usr/bin/env python3
"""Reads an XML document on stdin and prints what the tests ask of it, as
JSON: "ok" (it parses), "error", "root" ({ns}local of the root element),
and for a SOAP fault "faultcode", "faultcode_ns" (the namespace its prefix
is bound to), "faultcode_local" and "faultstring".  Standard library only;
entities are never fetched (the input comes from the module under test)."""

import io
import json
import sys
import xml.etree.ElementTree as ET

SOAPENV = "http://schemas.xmlsoap.org/soap/envelope/"


def main():
    data = sys.stdin.buffer.read()
    out = {"ok": False}
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        out["error"] = "has a DOCTYPE"
        print(json.dumps(out))
        return
    prefixes = {}
    try:
        root = None
        for event, item in ET.iterparse(io.BytesIO(data),
                                        events=("start", "start-ns")):
            if event == "start-ns":
                prefixes.setdefault(item[0], item[1])
            elif root is None:
                root = item
        # iterparse has read to the end: the document is well-formed
    except ET.ParseError as e:
        out["error"] = str(e)
        print(json.dumps(out))
        return
    out["ok"] = True
    out["root"] = root.tag
    fault = root.find("{%s}Body/{%s}Fault" % (SOAPENV, SOAPENV))
    if fault is not None:
        code = fault.findtext("faultcode")
        out["faultcode"] = code
        out["faultstring"] = fault.findtext("faultstring")
        if code is not None:
            prefix, _, local = code.rpartition(":")
            out["faultcode_local"] = local
            out["faultcode_ns"] = prefixes.get(prefix)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
