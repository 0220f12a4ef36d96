"""Prompt content: exactly ACP's ContentBlock shapes, shared by requests and deltas."""

from __future__ import annotations

from typing import Any

import msgspec


class TextBlock(msgspec.Struct, tag="text", tag_field="type", omit_defaults=True):
    text: str


class ImageBlock(msgspec.Struct, tag="image", tag_field="type", omit_defaults=True,
                 rename="camel"):
    data: str
    """Base64."""
    mime_type: str
    uri: str | None = None


class AudioBlock(msgspec.Struct, tag="audio", tag_field="type", omit_defaults=True,
                 rename="camel"):
    data: str
    mime_type: str


class ResourceLinkBlock(msgspec.Struct, tag="resource_link", tag_field="type",
                        omit_defaults=True, rename="camel"):
    uri: str
    name: str
    mime_type: str | None = None
    title: str | None = None
    size: int | None = None


class ResourceBlock(msgspec.Struct, tag="resource", tag_field="type", omit_defaults=True):
    resource: dict[str, Any]
    """`{uri, text, mimeType?}` or `{uri, blob, mimeType?}` as in ACP."""


ContentBlock = TextBlock | ImageBlock | AudioBlock | ResourceLinkBlock | ResourceBlock
"""Prompt content, exactly ACP's ContentBlock shapes."""
