$scheduler = Get-ADSyncScheduler
$StewardPrior = [ordered]@{ sync_cycle_in_progress = [bool]$scheduler.SyncCycleInProgress }
if ([bool]$scheduler.SyncCycleInProgress) {
    return (Out-StewardResult -Status 'failed' -Category 'sync_busy' -Prior $StewardPrior -Reason 'A sync cycle is already running (SyncCycleInProgress is True); start the delta sync again when it ends.')
}
$started = Start-ADSyncSyncCycle -PolicyType Delta
return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ result = [string]$started.Result; started_at = (Get-Date).ToUniversalTime().ToString('o') }) -Prior $StewardPrior)
