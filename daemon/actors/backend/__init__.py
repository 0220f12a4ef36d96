"""One backend actor: a persistent ACP agent process with one session, reused turn after turn.

Only the pool creates actors and reaches them through their handle; nothing outside this
package reads or writes an actor's attributes.
"""
