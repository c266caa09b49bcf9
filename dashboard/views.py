from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def index(request):
    """The live dashboard; data arrives over the WebSocket."""
    return render(
        request,
        "dashboard/index.html",
        {
            "can_add": request.user.has_perm("registry.add_endpoint"),
            "can_delete": request.user.has_perm("registry.delete_endpoint"),
        },
    )
