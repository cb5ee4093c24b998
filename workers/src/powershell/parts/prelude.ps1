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
