# steward-op: adsync.status@1
# Steward PowerShell template adsync.status, version 1: read the Entra Connect scheduler.
# Cmdlets: Get-ADSyncScheduler.
# Runs directly on the target machine.
# Every value comes from $StewardPayload (base64 of UTF-8 JSON) decoded below; none is part of this text.
#Requires -Version 5.1
$ErrorActionPreference = 'Stop'
$StewardTemplate = 'adsync.status@1'
$StewardPayload = ''
$StewardOp = {
    param([string]$StewardPayload)
    $StewardTemplate = 'adsync.status@1'
    $ErrorActionPreference = 'Stop'
    $ProgressPreference = 'SilentlyContinue'
    $StewardPrior = $null
    $p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($StewardPayload)) | ConvertFrom-Json
    $StewardSecrets = @(foreach ($StewardName in @('password')) {
        $StewardProp = $p.PSObject.Properties[$StewardName]
        if ($null -ne $StewardProp -and $null -ne $StewardProp.Value -and [string]$StewardProp.Value -ne '') { [string]$StewardProp.Value }
    })
    function Test-StewardValue {
        param([string]$Name)
        $prop = $p.PSObject.Properties[$Name]
        return ($null -ne $prop -and $null -ne $prop.Value)
    }
    function Get-StewardValue {
        param([string]$Name)
        $prop = $p.PSObject.Properties[$Name]
        if ($null -eq $prop) { return $null }
        return $prop.Value
    }
    function Hide-StewardSecret {
        param([string]$Text)
        foreach ($StewardSecret in $StewardSecrets) { $Text = $Text.Replace($StewardSecret, '[redacted]') }
        return $Text
    }
    function Get-StewardCategory {
        param($ErrorRecord)
        $type = $ErrorRecord.Exception.GetType().Name
        $text = [string]$ErrorRecord.Exception.Message
        if ($type -match 'ADIdentityNotFoundException|ManagementObjectNotFoundException|ItemNotFoundException') { return 'not_found' }
        if ($type -match 'ADIdentityAlreadyExistsException') { return 'already_exists' }
        if ($type -match 'ADPasswordComplexityException') { return 'password_policy' }
        if ($type -match 'PSRemotingTransportException') { return 'winrm_unreachable' }
        if ($type -match 'CommandNotFoundException') { return 'module_missing' }
        if ($text -match 'was not loaded because no valid module file was found') { return 'module_missing' }
        if ($text -match 'AAD is busy') { return 'sync_busy' }
        return 'error'
    }
    function Out-StewardResult {
        param([string]$Status, $Result = $null, $Prior = $null, [string]$Reason = '', [string]$Category = '')
        $StewardOut = [ordered]@{
            template = $StewardTemplate
            status = $Status
            result = $Result
            prior = $Prior
            reason = (Hide-StewardSecret $Reason)
            category = $Category
        }
        return ('STEWARD-RESULT ' + (ConvertTo-Json -InputObject $StewardOut -Compress -Depth 10))
    }
    try {
        Import-Module ADSync
        $scheduler = Get-ADSyncScheduler
        $next = $null
        if ($null -ne $scheduler.NextSyncCycleStartTimeInUTC) { $next = ([datetime]$scheduler.NextSyncCycleStartTimeInUTC).ToString('o') }
        return (Out-StewardResult -Status 'unchanged' -Result ([ordered]@{
            sync_cycle_in_progress = [bool]$scheduler.SyncCycleInProgress
            sync_cycle_enabled = [bool]$scheduler.SyncCycleEnabled
            next_sync_cycle_start_time_utc = $next
            interval = [string]$scheduler.CurrentlyEffectiveSyncCycleInterval
        }))
    } catch {
        return (Out-StewardResult -Status 'failed' -Prior $StewardPrior -Reason ([string]$_.Exception.Message) -Category (Get-StewardCategory $_))
    }
}
$StewardLines = @()
try {
    $StewardLines = @(& $StewardOp $StewardPayload)
} catch {
    $StewardLines = @('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = [string]$_.Exception.Message; category = 'error' })))
}
$StewardResult = @($StewardLines | Where-Object { $_ -is [string] -and $_.StartsWith('STEWARD-RESULT ') })
if ($StewardResult.Count -ge 1) {
    Write-Output $StewardResult[$StewardResult.Count - 1]
} else {
    Write-Output ('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = 'the script produced no result line'; category = 'error' })))
}
