//! The keep rules of a policy's `[retention]` section, as validated values; the planner
//! that applies them is [`crate::retention`].

use chrono::Duration;

/// The keep rules of a policy's `[retention]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionRules {
    /// Keep the N newest backups.
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the N newest hours.
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the N newest days.
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the N newest ISO weeks.
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the N newest months.
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the N newest years.
    pub keep_yearly: Option<u32>,
    /// Keep every backup within this span before the newest one.
    pub keep_within: Option<Duration>,
}

impl RetentionRules {
    /// Whether no rule is set (a policy must set one).
    pub(crate) fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_hourly.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_yearly.is_none()
            && self.keep_within.is_none()
    }
}
