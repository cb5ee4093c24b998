# steward-op: exchange_server.disable_remote_mailbox@1
# Steward PowerShell template exchange_server.disable_remote_mailbox, version 1: remove a remote mailbox's mail attributes on-prem.
# Cmdlets: Get-User, Disable-RemoteMailbox.
# Runs on a runner and reaches the target (payload field `server`) with Invoke-Command.
# Every value comes from $StewardPayload (base64 of UTF-8 JSON) decoded below; none is part of this text.
#Requires -Version 5.1
$ErrorActionPreference = 'Stop'
$StewardTemplate = 'exchange_server.disable_remote_mailbox@1'
$StewardPayload = ''
$StewardOp = {
    param([string]$StewardPayload)
    $StewardTemplate = 'exchange_server.disable_remote_mailbox@1'
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
        if (-not (Get-Command Get-Mailbox -ErrorAction SilentlyContinue)) {
            foreach ($StewardSnapIn in @('Microsoft.Exchange.Management.PowerShell.SnapIn', 'Microsoft.Exchange.Management.PowerShell.E2010')) {
                if (Get-PSSnapin -Registered -Name $StewardSnapIn -ErrorAction SilentlyContinue) {
                    Add-PSSnapin -Name $StewardSnapIn
                    break
                }
            }
        }
        if (-not (Get-Command Get-Mailbox -ErrorAction SilentlyContinue)) {
            throw 'The Exchange Management Shell is not installed on this machine: run Exchange scripts on the Exchange server, or set exchange_runner so that Steward reaches the server by PowerShell remoting.'
        }
        function Find-StewardExUser {
            param([string]$Identity)
            try {
                return (Get-User -Identity $Identity)
            } catch {
                if ($_.Exception.GetType().Name -eq 'ManagementObjectNotFoundException') { return $null }
                throw
            }
        }
        function Get-StewardExUser {
            param([string]$Identity)
            $found = Find-StewardExUser -Identity $Identity
            if ($null -eq $found) { throw (New-Object System.Management.Automation.ItemNotFoundException ("The operation couldn't be performed because object '" + $Identity + "' couldn't be found.")) }
            return $found
        }
        function Get-StewardRecipientDn {
            param([string]$Identity)
            return [string](Get-Recipient -Identity $Identity).DistinguishedName
        }
        function ConvertTo-StewardRecipient {
            param($Recipient)
            return [ordered]@{
                distinguished_name = [string]$Recipient.DistinguishedName
                recipient_type_details = [string]$Recipient.RecipientTypeDetails
                alias = [string]$Recipient.Alias
                primary_smtp_address = [string]$Recipient.PrimarySmtpAddress
                hidden_from_address_lists_enabled = [bool]$Recipient.HiddenFromAddressListsEnabled
            }
        }
        $user = Get-StewardExUser -Identity ([string]$p.identity)
        $kind = [string]$user.RecipientTypeDetails
        $StewardPrior = [ordered]@{ recipient_type_details = $kind }
        if ($kind -notmatch '^Remote') {
            return (Out-StewardResult -Status 'unchanged' -Prior $StewardPrior)
        }
        Disable-RemoteMailbox -Identity ([string]$user.DistinguishedName) -Confirm:$false
        return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ distinguished_name = [string]$user.DistinguishedName }) -Prior $StewardPrior)
    } catch {
        return (Out-StewardResult -Status 'failed' -Prior $StewardPrior -Reason ([string]$_.Exception.Message) -Category (Get-StewardCategory $_))
    }
}
$StewardLines = @()
try {
    $StewardTarget = [string]([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($StewardPayload)) | ConvertFrom-Json).server
    if ([string]::IsNullOrWhiteSpace($StewardTarget)) { throw 'The payload names no server to reach by PowerShell remoting.' }
    $StewardLines = @(Invoke-Command -ComputerName $StewardTarget -ScriptBlock $StewardOp -ArgumentList $StewardPayload)
} catch {
    $StewardCategory = 'error'
    if ($_.Exception.GetType().Name -eq 'PSRemotingTransportException') { $StewardCategory = 'winrm_unreachable' }
    $StewardLines = @('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = [string]$_.Exception.Message; category = $StewardCategory })))
}
$StewardResult = @($StewardLines | Where-Object { $_ -is [string] -and $_.StartsWith('STEWARD-RESULT ') })
if ($StewardResult.Count -ge 1) {
    Write-Output $StewardResult[$StewardResult.Count - 1]
} else {
    Write-Output ('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = 'the script produced no result line'; category = 'error' })))
}
