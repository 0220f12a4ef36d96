"""Helpers shared by the tests: the real daemon in a subprocess (`harness`), ACP peers and
recorders (`acp_peer`, `acp_tee`, `acp_editor`, `acp_bridge_helpers`), an SSH server
(`sshd`, `remote_rig`), a WebSocket client (`ws_client`) and the PROTOCOL.md renderer
(`protocol_doc`)."""
