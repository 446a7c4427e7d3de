"""Users of a tenant and their roles."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import EmailStr, Field

from api.auth import Principal, require
from api.context import api_context
from api.problems import PROBLEM_RESPONSES
from api.routers._schema import RequestBody, Resource, changes
from model.devices import Name
from model.scopes import Role
from storage.tenancy import User, UserRepository

router = APIRouter(prefix="/users", tags=["users"], responses=PROBLEM_RESPONSES)

Password = Annotated[str, Field(min_length=12, max_length=256)]


class UserIn(RequestBody):
    """A user to create."""

    email: EmailStr
    password: Password
    role: Role = Role.VIEWER
    display_name: Name | None = None


class UserPatch(RequestBody):
    """Fields to change."""

    display_name: Name | None = None
    role: Role | None = None
    password: Password | None = None
    disabled: bool | None = None


class UserOut(Resource):
    """A user (never with the password hash)."""

    id: str
    email: str
    display_name: str
    role: Role
    disabled: bool
    created_at: datetime
    updated_at: datetime


def _out(user: User) -> UserOut:
    return UserOut.model_validate(user)


@router.get("", summary="List users")
async def list_users(
    request: Request, principal: Annotated[Principal, Depends(require("users:read"))]
) -> list[UserOut]:
    """Every user of the tenant."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return [_out(u) for u in await UserRepository(scope).list()]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a user")
async def create_user(
    request: Request,
    response: Response,
    body: UserIn,
    principal: Annotated[Principal, Depends(require("users:write"))],
) -> UserOut:
    """Create a user with a role; 409 if the email is taken in this tenant."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        user = await UserRepository(scope).create(
            email=body.email,
            password=body.password,
            role=body.role,
            display_name=body.display_name or "",
        )
    response.headers["Location"] = f"{request.url.path}/{user.id}"
    return _out(user)


@router.get("/{user_id}", summary="Read a user")
async def get_user(
    request: Request,
    user_id: str,
    principal: Annotated[Principal, Depends(require("users:read"))],
) -> UserOut:
    """One user; 404 for an unknown or foreign id."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return _out(await UserRepository(scope).get(user_id))


@router.patch("/{user_id}", summary="Change a user")
async def update_user(
    request: Request,
    user_id: str,
    body: UserPatch,
    principal: Annotated[Principal, Depends(require("users:write"))],
) -> UserOut:
    """Change the display name, role, password or disabled flag."""
    values = {k: v for k, v in changes(body).items() if v is not None}
    async with api_context(request).database.tenant(principal.tenant) as scope:
        return _out(await UserRepository(scope).update(user_id, values))


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a user")
async def delete_user(
    request: Request,
    user_id: str,
    principal: Annotated[Principal, Depends(require("users:write"))],
) -> None:
    """Delete the user and revoke the tokens they created."""
    async with api_context(request).database.tenant(principal.tenant) as scope:
        await UserRepository(scope).delete(user_id)
