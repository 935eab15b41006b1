import base64


def test_roundtrip():
    assert base64.b64decode("aGVsbG8gd29ybGQ=") == b"hello world"
    assert base64.b64encode(b"hi") == b"aGk="
