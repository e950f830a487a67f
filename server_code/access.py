"""Who is signed in and what they may do.

Roles (the ``role`` column of the users table): ``researcher`` classifies images and sees the lab's
history; ``lab_admin`` may also delete anyone's predictions and enable accounts and set roles.
Sign-up is controlled: a new account starts disabled until a lab admin enables it.
"""

import anvil.server
import anvil.tables
import anvil.users
from anvil.tables import app_tables

from . import errors

ROLES = ("researcher", "lab_admin")


def current_user():
    """The signed-in, enabled user row, or None. On Anvil, get_user() returns the session's account
    without looking at ``enabled``: an account a lab admin disables would keep its open sessions."""
    user = anvil.users.get_user()
    if user is None or not user["enabled"]:
        return None
    return user


def require_user():
    user = current_user()
    if user is None:
        raise errors.NotSignedIn("Sign in to use NSC Fate")
    return user


def role_of(user):
    return (user["role"] or "researcher") if user is not None else None


def is_lab_admin(user):
    return user is not None and role_of(user) == "lab_admin"


def require_lab_admin():
    user = require_user()
    if not is_lab_admin(user):
        raise errors.Forbidden("Only a lab admin can do this")
    return user


def can_delete(user, prediction):
    """The owner of a prediction and lab admins may delete it."""
    if user is None:
        return False
    return is_lab_admin(user) or prediction["user"] == user


def user_summary(user):
    return {
        "id": user.get_id(),
        "email": user["email"],
        "role": role_of(user),
        "enabled": bool(user["enabled"]),
        "signed_up": user["signed_up"],
        "last_login": user["last_login"],
    }


@anvil.server.callable
def get_session_info():
    """The signed-in user's email and role, or None when nobody is signed in."""
    user = current_user()
    if user is None:
        return None
    return {"email": user["email"], "role": role_of(user), "is_lab_admin": is_lab_admin(user)}


@anvil.server.callable
def list_users():
    """All accounts (lab admins only), disabled ones (awaiting approval) first."""
    require_lab_admin()
    users = [user_summary(u) for u in app_tables.users.search()]
    return sorted(users, key=lambda u: (u["enabled"], u["email"] or ""))


def _other_enabled_admins(user):
    return [u for u in app_tables.users.search(role="lab_admin", enabled=True) if u != user]


def _get_user(user_id):
    user = app_tables.users.get_by_id(user_id) if isinstance(user_id, str) else None
    if user is None:
        raise errors.NotFound("No such user")
    return user


_UNCHANGED = object()


@anvil.tables.in_transaction
def change_user(user_id, role=_UNCHANGED, enabled=_UNCHANGED):
    """Set an account's role and/or whether it is enabled (lab admins only), in one transaction: the
    check that an enabled lab admin remains and the write cannot be split by another admin's change."""
    require_lab_admin()
    if role is not _UNCHANGED and role not in ROLES:
        raise errors.InvalidRequest("role must be one of: %s" % ", ".join(ROLES), code="bad_role")
    if enabled is not _UNCHANGED and not isinstance(enabled, bool):
        raise errors.InvalidRequest("enabled must be True or False", code="bad_enabled")
    user = _get_user(user_id)
    stays_admin = (role in (_UNCHANGED, "lab_admin")) and enabled is not False
    if is_lab_admin(user) and user["enabled"] and not stays_admin and not _other_enabled_admins(user):
        message = ("This is the last lab admin; it cannot be disabled" if enabled is False else
                   "This is the last lab admin; make someone else lab admin first")
        raise errors.InvalidRequest(message, code="last_admin")
    if role is not _UNCHANGED:
        user["role"] = role
    if enabled is not _UNCHANGED:
        user["enabled"] = enabled
    return user_summary(user)


@anvil.server.callable
def set_user_role(user_id, role):
    """Make an account a researcher or a lab admin (lab admins only; the last lab admin stays)."""
    return change_user(user_id, role=role)


@anvil.server.callable
def set_user_enabled(user_id, enabled):
    """Enable (approve) or disable an account (lab admins only; the last lab admin stays enabled)."""
    return change_user(user_id, enabled=enabled)
