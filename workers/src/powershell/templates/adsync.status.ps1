$scheduler = Get-ADSyncScheduler
$next = $null
if ($null -ne $scheduler.NextSyncCycleStartTimeInUTC) { $next = ([datetime]$scheduler.NextSyncCycleStartTimeInUTC).ToString('o') }
return (Out-StewardResult -Status 'unchanged' -Result ([ordered]@{
    sync_cycle_in_progress = [bool]$scheduler.SyncCycleInProgress
    sync_cycle_enabled = [bool]$scheduler.SyncCycleEnabled
    next_sync_cycle_start_time_utc = $next
    interval = [string]$scheduler.CurrentlyEffectiveSyncCycleInterval
}))
