"""Admin of topics: what exists, who may follow it, how many subscribers it has."""

from __future__ import annotations

from django.contrib import admin

from .models import Topic
from .selectors import topics_with_counts


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "user_can_follow", "subscribers", "created_by_service", "created_at")
    list_filter = ("user_can_follow",)
    search_fields = ("=key", "name")
    readonly_fields = ("created_by_service", "created_at", "subscribers")

    def get_queryset(self, request):
        return topics_with_counts()

    @admin.display(description="Subscribers", ordering="subscriber_count")
    def subscribers(self, topic: Topic) -> int:
        return topic.subscriber_count
